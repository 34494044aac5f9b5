"""The Typer application object; command modules register themselves on it."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="hpsearch",
    help="Hyperparameter search for small image classifiers (MLP-Mixer) with Optuna.\n\n"
    "Studies are defined in TOML files (see studies/); every epoch of every trial is stored in "
    "the results database (--db URL, $HPSEARCH_DB, default sqlite:///hpsearch.db).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode=None,  # help texts show [tables] literally
)


@app.callback()
def _root() -> None:
    """Hyperparameter search for small image classifiers."""

DB_HELP = ("Results database URL (SQLAlchemy form, e.g. sqlite:///hpsearch.db or "
           "postgresql+psycopg://user:pw@host:5432/db). Default: $HPSEARCH_DB, else "
           "sqlite:///hpsearch.db. Timeouts go in the URL: ?connect_timeout=SECONDS "
           "(PostgreSQL, default 10), ?timeout=SECONDS (SQLite lock wait, default 60).")
