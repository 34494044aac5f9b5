"""`hpsearch study ...` (delete, rename, copy, note; stop, pause, resume) and `hpsearch tag`:
each changes Optuna's half of a study and ours together (see hpsearch/db/lifecycle.py for how
atomic that is), or the study's state that every worker reads (hpsearch/search/control.py)."""

from __future__ import annotations

from typing import Annotated

import typer

from hpsearch.cli.app import INT_MAX, DbOption, StudyArg, app, confirm

study_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None)
app.add_typer(
    study_app, name="study",
    help="Delete, rename, copy or annotate a study: hpsearch's rows and Optuna's study "
    "together (refused while its workers run); stop, pause or resume it on every machine.",
)


def _url(db: str | None) -> str:
    from hpsearch.db.engine import database_url

    return database_url(db)


@study_app.command("delete")
def delete_cmd(
    name: StudyArg,
    yes: Annotated[bool, typer.Option(
        "--yes", "-y", help="Delete without asking (needed when stdin is not a terminal).")
    ] = False,
    db: DbOption = None,
) -> None:
    """Delete a study: its trials, epochs and evaluations, and Optuna's study of that name.

    Also removes either half left alone (after `optuna delete-study`, say). Asks first.

    Examples:

        hpsearch study delete try

        hpsearch study delete try --yes
    """
    from hpsearch.db.lifecycle import check_deletable, delete_study

    check_deletable(_url(db), name)  # an unknown study is said before any question
    confirm(yes, f"Delete study {name!r} and all its results?",
            f"refusing to delete study {name!r} without confirmation")
    typer.echo(delete_study(_url(db), name))


@study_app.command("rename")
def rename_cmd(
    old: Annotated[str, typer.Argument(help="Current name.", metavar="OLD",
                                       show_default=False)],
    new: Annotated[str, typer.Argument(
        help="New name (1-200 letters, digits, spaces, '.', '-' or '_').", metavar="NEW",
        show_default=False)],
    db: DbOption = None,
) -> None:
    """Rename a study in hpsearch's tables and in Optuna's, in one transaction.

    After a rename in optuna-dashboard, `hpsearch study rename OLD NEW` makes ours follow.

    Examples:

        hpsearch study rename try try-2026
    """
    from hpsearch.db.lifecycle import rename_study
    from hpsearch.search.study_file import check_study_name

    check_study_name(new, "new name")
    typer.echo(rename_study(_url(db), old, new))


@study_app.command("copy")
def copy_cmd(
    name: StudyArg,
    new: Annotated[str, typer.Argument(help="Name of the copy.", metavar="NEW",
                                       show_default=False)],
    to_db: Annotated[str | None, typer.Option(
        "--to-db", help="Database to copy into (default: the same database); created and "
        "migrated if needed.", show_default=False)] = None,
    db: DbOption = None,
) -> None:
    """Copy a study under a new name: Optuna's study with every trial, and every trial row,
    epoch and evaluation of hpsearch's.

    Examples:

        hpsearch study copy try try-backup

        hpsearch study copy try try --to-db sqlite:///archive.db
    """
    from hpsearch.db.lifecycle import copy_study
    from hpsearch.search.study_file import check_study_name

    check_study_name(new, "name of the copy")
    typer.echo(copy_study(_url(db), name, new, to_db))


@study_app.command("note")
def note_cmd(
    name: StudyArg,
    text: Annotated[str, typer.Argument(help="The note; \"\" clears it.", metavar="TEXT",
                                        show_default=False)],
    db: DbOption = None,
) -> None:
    """Set a study's note, shown by `hpsearch studies`, the report and optuna-dashboard.

    Examples:

        hpsearch study note try "baseline, 8k subset"

        hpsearch study note try ""        # clears it
    """
    from hpsearch.db.notes import set_study_note

    set_study_note(_url(db), name, text)
    typer.echo(f"study {name!r}: note set to {text!r}" if text
               else f"study {name!r}: note cleared")


@study_app.command("stop")
def stop_cmd(name: StudyArg, db: DbOption = None) -> None:
    """Stop a study on every machine: each worker ends its trial at the end of its current
    epoch (kept with its checkpoint, to resume) and leaves; new workers start nothing. `hpsearch
    study resume NAME` undoes it; then `hpsearch run` of its file continues where it stopped.
    Also what a study's `[study] target` does once a trial reaches it.

    Examples:

        hpsearch study stop try --db postgresql+psycopg://hps@db-host/hps
    """
    typer.echo(_set_halt(db, name, "stopped"))


@study_app.command("pause")
def pause_cmd(name: StudyArg, db: DbOption = None) -> None:
    """Pause a study on every machine: each worker finishes its running trial, then leaves;
    new workers start nothing until `hpsearch study resume NAME`.

    Examples:

        hpsearch study pause try --db postgresql+psycopg://hps@db-host/hps
    """
    typer.echo(_set_halt(db, name, "paused"))


@study_app.command("resume")
def resume_cmd(name: StudyArg, db: DbOption = None) -> None:
    """Undo `study stop` or `study pause` (or a reached target): workers may start trials
    again; `hpsearch run` of the study's file continues it.

    Examples:

        hpsearch study resume try --db postgresql+psycopg://hps@db-host/hps
    """
    typer.echo(_set_halt(db, name, None))


def _set_halt(db: str | None, name: str, state: str | None) -> str:
    from hpsearch.search.control import set_halt

    return set_halt(_url(db), name, state)


@app.command()
def tag(
    name: StudyArg,
    number: Annotated[int, typer.Argument(help="Trial number.", metavar="NUMBER", min=0,
                                          max=INT_MAX, show_default=False)],
    tags: Annotated[list[str] | None, typer.Argument(
        help="Tags to add (or with --remove, to remove).", metavar="TAG",
        show_default=False)] = None,
    remove: Annotated[bool, typer.Option("--remove", help="Remove the tags instead.")] = False,
    note: Annotated[str | None, typer.Option(
        help="Set the trial's note (\"\" clears it).", show_default=False)] = None,
    db: DbOption = None,
) -> None:
    """Tag a trial, or set its note; `hpsearch show NAME NUMBER` shows both.

    Examples:

        hpsearch tag try 3 keeper baseline

        hpsearch tag try 3 baseline --remove

        hpsearch tag try 3 --note "diverged after epoch 2"
    """
    from hpsearch.db.notes import tag_trial

    given = tuple(tags or ())
    now, now_note = tag_trial(_url(db), name, number, add=() if remove else given,
                              remove=given if remove else (), note=note)
    typer.echo(f"trial {number}: tags [{', '.join(now)}]" + (f", note: {now_note}"
                                                            if now_note else ""))
