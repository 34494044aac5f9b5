"""The Typer application object; command modules register themselves on it."""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import Annotated, Any

import typer
from typer._click.exceptions import ClickException, NoArgsIsHelpError  # typer vendors click
from typer.core import TyperGroup

from hpsearch.cli.oneline import error_line
from hpsearch.errors import HpsearchError
from hpsearch.limits import MAX_THREADS, MIN_TIMEOUT_S
from hpsearch.params import INT_MAX

__all__ = ["INT_MAX", "MAX_THREADS", "OneLineErrors", "app", "finite"]


class OneLineErrors(TyperGroup):
    """Runs a command and turns whatever it raises into one line `hpsearch: error: ...` and a
    non-zero exit (2), unless `debug` is set; click's usage errors too. In the group rather than
    in `main()`, so that in-process callers (typer.testing.CliRunner) see the same behaviour."""

    debug = False  # set per invocation by the root callback (--debug / HPSEARCH_DEBUG=1)

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except NoArgsIsHelpError as exc:  # `hpsearch` alone: the help, not an error
            exc.show()
            code = exc.exit_code
        except Exception as exc:  # the one place that shows errors to the user
            if isinstance(exc, typer.Abort) and isinstance(exc.__cause__, EOFError):
                exc = exc.__cause__  # typer turns any EOFError into a bare "Aborted!"
            if self.debug and not isinstance(exc, ClickException):
                raise
            print(f"hpsearch: error: {error_line(exc)}", file=sys.stderr)
            code = exc.exit_code if isinstance(exc, ClickException) else 2
        sys.exit(code if isinstance(code, int) else 0)

    def list_commands(self, ctx: Any) -> list[str]:
        names = super().list_commands(ctx)
        rank = {name: i for i, name in enumerate(COMMAND_ORDER)}
        return sorted(names, key=lambda name: (rank.get(name, len(rank)), name))


app = typer.Typer(
    name="hpsearch",
    cls=OneLineErrors,
    help="Hyperparameter search for small image classifiers (MLP-Mixer) with Optuna.\n\n"
    "Studies are defined in TOML files (see studies/); every epoch of every trial is stored in "
    "the results database (--db URL, $HPSEARCH_DB, default sqlite:///hpsearch.db).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode=None,  # help texts show [tables] literally
)


# `hpsearch --help` lists the commands in the order a user meets them; any other command
# follows, alphabetically
COMMAND_ORDER = ("init", "run", "worker", "studies", "trials", "best", "show", "compare", "export",
                 "report", "evaluate", "train", "study", "db")


def _show_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"hpsearch {version('hpsearch')}")
        raise typer.Exit


@app.callback()
def _root(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option(
        "--debug", envvar="HPSEARCH_DEBUG", show_envvar=False,
        help="Show the full traceback of an error instead of one line (also "
        "HPSEARCH_DEBUG=1). Give it before the command: hpsearch --debug run ...")] = False,
    _version: Annotated[bool, typer.Option(
        "--version", callback=_show_version, is_eager=True,
        help="Print hpsearch's version and exit.")] = False,
) -> None:
    """Hyperparameter search for small image classifiers."""
    group = ctx.command
    if isinstance(group, OneLineErrors):
        group.debug = debug

def finite(value: float | None) -> float | None:
    """Callback of float options: nan passes every range check, inf is no number of seconds."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"must be a finite number, got {value}")
    return value


def open_fraction(value: float | None) -> float | None:
    """Callback of share options that must leave something on both sides (0 < x < 1), which
    typer's min/max (closed bounds) cannot say."""
    if finite(value) is not None and not 0 < value < 1:
        raise typer.BadParameter(f"must be between 0 and 1 (both excluded), got {value}")
    return value


def confirm(yes: bool, question: str, refusal: str) -> None:
    """Ask `question` unless --yes was given; with no terminal to ask on, refuse (one line)."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise HpsearchError(f"{refusal}: pass --yes")
    typer.confirm(question, abort=True)


DB_HELP = ("Results database URL (SQLAlchemy form, e.g. sqlite:///hpsearch.db or "
           "postgresql+psycopg://user:pw@host:5432/db). Default: $HPSEARCH_DB, else "
           "sqlite:///hpsearch.db. Timeouts go in the URL: ?connect_timeout=SECONDS "
           "(PostgreSQL, default 10), ?timeout=SECONDS (SQLite lock wait, default 60).")
DbOption = Annotated[str | None, typer.Option("--db", help=DB_HELP, show_default=False)]
DeviceOption = Annotated[str, typer.Option(help="auto (a GPU if present), cpu or cuda.")]
ThreadsOption = Annotated[int | None, typer.Option(
    help="CPU threads (default: every available core).", min=1, max=MAX_THREADS)]
TimeoutOption = Annotated[float | None, typer.Option(
    help="Each worker stops starting new trials after this many seconds (default: the study "
    "file's [study] timeout, if any); a running trial finishes.", min=MIN_TIMEOUT_S,
    callback=finite)]
StudyArg = Annotated[str, typer.Argument(help="Study name (see `hpsearch studies`).",
                                         metavar="NAME")]
