"""`hpsearch dashboard`: optuna-dashboard on the results database."""

from __future__ import annotations

from typing import Annotated

import typer

from hpsearch.cli.app import DB_HELP, app

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@app.command()
def dashboard(
    db: Annotated[str | None, typer.Option("--db", help=DB_HELP)] = None,
    host: Annotated[str, typer.Option(
        help="Address to listen on. The dashboard has no login and can edit studies: keep it "
        "on loopback and reach it through an SSH tunnel.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8080,
) -> None:
    """Serve optuna-dashboard for the studies in the results database (Ctrl-C stops it).

    It shows Optuna's view of each study: values, intermediate values, parameters, and the
    user attributes hpsearch records per trial (size, best epoch, reason, worker, test
    accuracy). Needs the optional extra: pip install 'hpsearch[dashboard]'.
    """
    from hpsearch.errors import HpsearchError

    try:
        from optuna_dashboard import run_server
    except ImportError:
        raise HpsearchError("optuna-dashboard is not installed: pip install "
                            "'hpsearch[dashboard]' (or pip install optuna-dashboard)") from None
    import optuna
    from optuna.storages import RDBStorage

    from hpsearch.db.engine import database_url, engine_kwargs, mask_url, normalise_url
    from hpsearch.db.migrate import require_schema

    url = normalise_url(database_url(db))
    require_schema(url)  # a typo in --db must not create an empty database
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = RDBStorage(url, engine_kwargs=engine_kwargs(url))
    if host not in LOOPBACK:
        typer.echo(f"warning: listening on {host}: anyone who reaches it can read and edit "
                   "these studies", err=True)
    typer.echo(f"optuna-dashboard for {mask_url(url)} on http://{host}:{port}/ "
               "(Ctrl-C stops it)")
    try:
        run_server(storage, host=host, port=port)  # returns on Ctrl-C
    except OSError as exc:
        raise HpsearchError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    typer.echo("dashboard stopped")
