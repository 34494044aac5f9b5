"""`hpsearch db ...`: create, inspect and check the results schema (our hps_* tables only).

Alembic and the models are imported inside the commands, so other commands start no slower.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from hpsearch.cli.app import DbOption, app, confirm

db_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None)
app.add_typer(
    db_app, name="db",
    help="Create, migrate and check hpsearch's tables in the results database. Optuna's own "
    "tables in the same database are never touched.",
)


def _describe(revision: str | None) -> str:
    from hpsearch.db.migrate import head_revision

    head = head_revision()
    if revision is None:
        return "none (no hpsearch tables)"
    if revision == head:
        return f"{revision} (head)"
    return f"{revision} (head is {head})"


def _shown_url(db: str | None) -> str:
    from hpsearch.db.engine import database_url, mask_url

    return mask_url(database_url(db))


@db_app.command("upgrade")
def upgrade_cmd(
    db: DbOption = None,
    revision: Annotated[str, typer.Option(
        help="Revision to migrate to: head (the newest this hpsearch knows) or a revision id.")
    ] = "head",
) -> None:
    """Create hpsearch's tables, or migrate them to a newer revision.

    Commands that write (run, worker) do this on first use; run it once by hand to prepare a
    shared PostgreSQL database before starting workers on several machines.

    Examples:

        hpsearch db upgrade --db postgresql+psycopg://hps@db-host/hps
    """
    from hpsearch.db import migrate

    before = migrate.current_revision(db)
    migrate.upgrade(db, revision)
    after = migrate.current_revision(db)
    change = "already at" if before == after else f"upgraded from {before or 'empty'} to"
    typer.echo(f"{_shown_url(db)}: {change} {_describe(after)}")


# "-1" (one step back, as Alembic writes it) is a revision, not an option
@db_app.command("downgrade", context_settings={"ignore_unknown_options": True})
def downgrade_cmd(
    revision: Annotated[str, typer.Argument(
        help="Revision to migrate back to: a revision id, -1 for one step, or base to drop "
        "every hpsearch table AND ITS DATA.", show_default=False)],
    yes: Annotated[bool, typer.Option(
        "--yes", "-y", help="Downgrade without asking (needed when stdin is not a terminal).")
    ] = False,
    db: DbOption = None,
) -> None:
    """Migrate hpsearch's tables back to an older revision (Optuna's tables stay as they are).

    What newer revisions added is dropped with its data (base: every trial, epoch and
    evaluation of hpsearch's): it lists what would be lost, rows per table and values per
    column, and asks first. Refused while a study's workers run.

    Examples:

        hpsearch db downgrade -1

        hpsearch db downgrade base --yes --db sqlite:///old.db
    """
    from hpsearch.db import migrate

    before = migrate.current_revision(db)
    losses = migrate.downgrade_losses(db, revision)  # also refuses while workers run
    dropping = ("dropping " + ", ".join(
        f"{what}: {count} {'value' if '.' in what else 'row'}{'s' if count != 1 else ''}"
        for what, count in losses.items())) if losses else "no stored data is lost"
    confirm(yes, f"Downgrade hpsearch's tables in {_shown_url(db)} to {revision}, {dropping}?",
            f"refusing to downgrade {_shown_url(db)} to {revision} without confirmation "
            f"({dropping})")
    migrate.downgrade(db, revision)
    after = migrate.current_revision(db)
    change = "already at" if before == after else f"downgraded from {before or 'empty'} to"
    typer.echo(f"{_shown_url(db)}: {change} {_describe(after)}"
               + (f" ({dropping})" if losses else ""))


@db_app.command("current")
def current_cmd(db: DbOption = None) -> None:
    """Print the database's hpsearch schema revision (and whether it is the newest).

    Examples:

        hpsearch db current

        hpsearch db current --db postgresql+psycopg://hps@db-host/hps
    """
    from hpsearch.db import migrate

    typer.echo(_describe(migrate.current_revision(db)))


@db_app.command("check")
def check_cmd(db: DbOption = None) -> None:
    """Compare the database's hpsearch tables with the models, and check that every study of
    ours still has its Optuna study (and the reverse, and every trial row its Optuna trial);
    exit 1 and list any difference or orphan.

    Exits 2 when the schema is missing, older or newer than this hpsearch.

    Examples:

        hpsearch db check

        hpsearch db check --db sqlite:///results.db
    """
    from hpsearch.db import migrate
    from hpsearch.db.engine import database_url
    from hpsearch.db.lifecycle import orphans

    migrate.require_schema(db)
    drift = migrate.schema_drift(db)
    if drift:
        typer.echo(f"{_shown_url(db)}: schema differs from the models:")
        for diff in drift:
            typer.echo(f"  {format_diff(diff)}")
    else:
        head = _describe(migrate.head_revision())
        typer.echo(f"{_shown_url(db)}: schema matches the models, revision {head}")
    lost = orphans(database_url(db))
    if lost:
        typer.echo(f"{len(lost)} orphan(s) between hpsearch's rows and Optuna's:")
        for line in lost:
            typer.echo(f"  {line}")
    else:
        typer.echo("every study and trial of hpsearch has its Optuna study and trial")
    if drift or lost:
        raise typer.Exit(1)


def format_diff(diff: Any) -> str:
    """One Alembic autogenerate diff as a line: a tuple, or a list of one column's changes."""
    if isinstance(diff, list):  # [(op, schema, table, column, info, old, new), ...]
        return "; ".join(f"{op} {table}.{column}: {old!r} -> {new!r}"
                         for op, _schema, table, column, _info, old, new in diff)
    op, *objects = diff  # e.g. ("add_column", schema, table name, Column), ("add_index", Index)
    names = [_object_name(obj) for obj in objects if obj is not None and not isinstance(obj, str)]
    return f"{op} {', '.join(names)}"


def _object_name(obj: Any) -> str:
    table = getattr(obj, "table", None)
    name = getattr(obj, "name", None) or type(obj).__name__
    return f"{table.name}.{name}" if table is not None else str(name)
