"""`hpsearch dashboard`: optuna-dashboard on the results database."""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType
from typing import Annotated

import typer

from hpsearch.cli.app import DbOption, app

LOOPBACK = ("127.0.0.1", "localhost", "::1")
STOP_BOUND_S = 10  # a stop signal ends the process within this, whatever holds it


@app.command()
def dashboard(
    db: DbOption = None,
    host: Annotated[str, typer.Option(
        help="Address to listen on. The dashboard has no login and can edit studies: keep it "
        "on loopback and reach it through an SSH tunnel.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8080,
) -> None:
    """Serve optuna-dashboard for the studies in the results database (Ctrl-C stops it).

    It shows Optuna's view of each study: values, intermediate values, parameters, and the
    user attributes hpsearch records per trial (size, best epoch, reason, worker) and, after
    `hpsearch evaluate`, each evaluated trial's test accuracy as a study attribute. Needs the
    optional extra: pip install 'hpsearch[dashboard]'.

    Examples:

        hpsearch dashboard

        hpsearch dashboard --port 8081 --db postgresql+psycopg://hps@db-host/hps
    """
    from hpsearch.errors import HpsearchError

    try:
        from optuna_dashboard import wsgi
    except ImportError:
        raise HpsearchError("optuna-dashboard is not installed: pip install "
                            "'hpsearch[dashboard]' (or pip install optuna-dashboard)") from None
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    import optuna
    from optuna.storages import RDBStorage

    from hpsearch.db.engine import database_url, make_engine, mask_url, normalise_url
    from hpsearch.db.migrate import require_schema
    from hpsearch.stop import STOP_SIGNALS, Stopped, exit_code, signal_name, signum_of

    url = normalise_url(database_url(db))
    require_schema(url)  # a typo in --db must not create an empty database
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = RDBStorage(url, engine_kwargs={"pool": make_engine(url).pool})

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, *args: object) -> None:  # no line per request
            pass

    received: list[int] = []

    class StoppableServer(WSGIServer):
        def service_actions(self) -> None:
            # Stop requests end the loop between requests: raised inside one (as a signal
            # handler raising KeyboardInterrupt does), wsgiref's handler catches and logs it,
            # and the server went on serving
            if received:
                raise Stopped(received[0])

    # our own server, not optuna_dashboard.run_server: bottle's runner swallowed Ctrl-C at
    # times (seen: the process kept serving after SIGINT), and SIGTERM must stop it too
    try:
        server = make_server(host, port, wsgi(storage), server_class=StoppableServer,
                             handler_class=QuietHandler)
    except OSError as exc:
        raise HpsearchError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    if host not in LOOPBACK:
        typer.echo(f"warning: listening on {host}: anyone who reaches it can read and edit "
                   "these studies", err=True)
    _say(f"optuna-dashboard for {mask_url(url)} on http://{host}:{port}/ (Ctrl-C stops it)")

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        if received:
            return
        received.append(signum)
        # a bound on the whole stop: once a dashboard whose output pipe had closed served on
        # for 35 minutes after SIGINT and SIGTERM
        bound = threading.Timer(STOP_BOUND_S, os._exit, (exit_code(signum),))
        bound.daemon = True
        bound.start()

    for signum in STOP_SIGNALS:  # an ignored signal stays ignored (nohup)
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, request_stop)
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt as exc:
        signum = signum_of(exc)
        _say(f"dashboard stopped ({signal_name(signum)})")
        if signum != signal.SIGINT:  # Ctrl-C is the normal way to end it: exit 0
            raise typer.Exit(exit_code(signum)) from None
    finally:
        server.server_close()


def _say(line: str) -> None:
    """Print a line, unless the output is gone (a closed pipe: its reader left): then nothing
    more is printed, and the interpreter's final flush does not fail the exit code either."""
    try:
        typer.echo(line)
        sys.stdout.flush()
    except OSError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
