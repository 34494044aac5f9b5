"""Read-only commands that print recorded studies: studies, trials, best, show (their shared
output formats and options too; compare, export and report: output_cmds.py).

They never import torch (nor the trainer's modules): heavy modules are imported inside the
commands that need them, so `hpsearch best` answers in a fraction of a second.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated

import typer

from hpsearch.cli.app import INT_MAX, DbOption, StudyArg, app

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from hpsearch.report.sheets import Sheet


# One vocabulary: every query command knows table, md, csv, tsv and json; best adds toml (a
# config to retrain), export leaves out table (it writes files: output_cmds.ExportFormat)
Format = StrEnum("Format", "table md csv tsv json")
BestFormat = StrEnum("BestFormat", "table md csv tsv json toml")
State = StrEnum("State", "running complete pruned failed")


FORMAT_HELP = ("Output: table (terminal; cut to its width), md (Markdown), csv, tsv (for cut, "
               "awk, sort) or json (full precision, every column, for scripts).")
FormatOption = Annotated[Format, typer.Option("--format", "-f", help=FORMAT_HELP)]


@contextmanager
def connect(db: str | None) -> Iterator[Connection]:
    """A read connection to the results database (hpsearch.db.migrate.reading)."""
    from hpsearch.db.migrate import reading

    with reading(db) as conn:
        yield conn


def emit(sheet: Sheet, fmt: str, *, columns: str | None = None, fit: bool = True) -> None:
    """Print `sheet` in `fmt`; `columns` (comma-separated) picks and orders its columns; a
    terminal table drops the columns that do not fit unless `fit` is off."""
    from hpsearch.errors import ConfigError
    from hpsearch.report import sheets

    if columns is not None:
        wanted = [c.strip() for c in columns.split(",") if c.strip()]
        if not wanted:
            raise ConfigError("--columns names no column (e.g. --columns number,state,lr)")
        sheet = sheets.select_columns(sheet, wanted)
    if fmt == "table":
        from rich.console import Console

        sheets.print_table(sheet, Console(), fit=fit and columns is None)
    else:
        sheets.write(sheet, fmt, sys.stdout)


ColumnsOption = Annotated[str | None, typer.Option(
    "--columns", help="Comma-separated columns to show, in this order: a column's key (as in "
    "-f csv), its title, or a parameter's name, e.g. --columns number,state,best_val_acc,lr.")]
AllOption = Annotated[bool, typer.Option(
    "--all", help="On a terminal, show every column even if lines get wider than it (by "
    "default the columns that do not fit are left out and named below the table; files and "
    "pipes always get every column).")]


BEST_HELP = ("Best means the complete trial with the best finite value of the study's first "
             "objective ([study] metric or objectives: the highest val_acc by default, the lowest "
             "val_loss if chosen; ties: the next objectives in turn, then the lowest trial "
             "number), as Optuna's best_trial: pruned trials never count, because a pruned "
             "trial's value was measured at the smaller budget it was stopped at. In a "
             "multi-objective study this chosen trial is the Pareto front's best in the first "
             "objective (see best --pareto).")


@app.command(help="List every study: trial counts by state, best value and the objective it "
             "belongs to, dataset, created, last activity.\n\n" + BEST_HELP
             + "\n\nExamples:\n\nhpsearch studies\n\nhpsearch studies -f json --db "
             "postgresql+psycopg://hps@db-host/hps")
def studies(db: DbOption = None, fmt: FormatOption = Format.table,
            columns: ColumnsOption = None, show_all: AllOption = False) -> None:
    from hpsearch.db import summary_queries
    from hpsearch.report.tables import studies_sheet

    with connect(db) as conn:
        emit(studies_sheet(summary_queries.list_studies(conn)), fmt.value, columns=columns,
             fit=not show_all)


@app.command(help="A study's trials, best first: the objectives, a mark on the best trial, "
             "the sampled parameters (on a terminal the most important first, by Optuna's "
             "PED-ANOVA over the complete trials, so that a narrow one keeps those; else in "
             "the search space's order), the final test accuracy, then epochs, time, size, "
             "why a trial was pruned or failed, and its tags. A pruned trial can rank above "
             "the best."
             "\n\n" + BEST_HELP + "\n\nExamples:\n\n"
             "hpsearch trials try  (on 80 columns: the objectives, the 3 most important "
             "parameters)\n\n"
             "hpsearch trials try --state complete --top 5\n\n"
             "hpsearch trials try --tag keeper -f csv > keepers.csv")
def trials(
    name: StudyArg,
    top: Annotated[int | None, typer.Option(
        help="Show only the first N trials in the sort order (default: all).", min=1,
        max=INT_MAX)] = None,
    state: Annotated[list[State] | None, typer.Option(
        help="Only trials in this state (repeatable).")] = None,
    tag: Annotated[list[str] | None, typer.Option(
        help="Only trials with this tag (`hpsearch tag`; repeatable: trials with every one "
        "given).")] = None,
    sort: Annotated[str, typer.Option(
        help="Sort by a column: value (default: the first objective, best first; also called "
        "by its column, e.g. best_val_acc or best_val_loss), number, state, best_epoch, "
        "epochs_run, seconds, n_params, started_at, finished_at, or a parameter name such as lr "
        "(ascending). Prefix with '-' to reverse, e.g. --sort=-seconds.")] = "value",
    fmt: FormatOption = Format.table,
    columns: ColumnsOption = None,
    show_all: AllOption = False,
    db: DbOption = None,
) -> None:
    from hpsearch.db import evaluation_queries, queries
    from hpsearch.report.leaderboard import leaderboard_sheet

    with connect(db) as conn:
        study = queries.find_study(conn, name)
        rows = queries.leaderboard(conn, study, top=top, states=[s.value for s in state or []],
                                   sort=sort, tags=tag or ())
        emit(leaderboard_sheet(conn, study, rows, ranked=fmt is Format.table and _on_terminal(),
                               tests=evaluation_queries.study_evaluations(conn, study),
                               reasons=True),
             fmt.value, columns=columns, fit=not show_all)


def print_leaderboard(url: str, name: str, top: int, *, ranked: bool = True) -> None:
    """The `top` best trials as a terminal table (used by `hpsearch run` at its end);
    `ranked`: the parameters by importance on a terminal (which imports Optuna)."""
    from hpsearch.db import queries
    from hpsearch.report.leaderboard import leaderboard_sheet

    with connect(url) as conn:
        study = queries.find_study(conn, name)
        emit(leaderboard_sheet(conn, study, queries.leaderboard(conn, study, top=top),
                               ranked=ranked and _on_terminal()), "table")


def _on_terminal() -> bool:
    """Whether a table goes to a terminal, which fits it to its width (rich decides)."""
    from rich.console import Console

    return Console().is_terminal


@app.command(help="The best trial of a study and its full parameters (fixed and sampled, as "
             "its trial row holds them); with --pareto, the Pareto front.\n\n" + BEST_HELP
             + "\n\nExamples:\n\nhpsearch best try\n\nhpsearch best try-small --pareto\n\n"
             "hpsearch best try -f toml > best.toml && hpsearch train --config best.toml")
def best(
    name: StudyArg,
    pareto: Annotated[bool, typer.Option(
        "--pareto", help="Print the Pareto front instead: the complete trials that no other "
        "complete trial beats in every objective, best first objective first, with each "
        "objective's value and the chosen trial marked (-f table, md, csv, tsv or json; json adds "
        "the objectives and the chosen trial). Evaluate another one with `hpsearch evaluate "
        "NAME --trial N`.")] = False,
    fmt: Annotated[BestFormat, typer.Option(
        "--format", "-f", help="table, md, csv, tsv, json, or toml: the trial's seeds, a [params] "
        "table with the full resolved parameters and a [data] table, for `hpsearch train "
        "--config FILE` (which then repeats the trial's training)."
    )] = BestFormat.table,
    db: DbOption = None,
) -> None:
    from hpsearch.db import evaluation_queries, queries, summary_queries
    from hpsearch.errors import HpsearchError
    from hpsearch.report import sheets, tables
    from hpsearch.search.retrain import retrain_config

    if pareto:
        _print_front(name, fmt, db)
        return
    with connect(db) as conn:
        study = queries.find_study(conn, name)
        trial = queries.best_trial(conn, study)
        if trial is None:
            counts = summary_queries.study_stats(conn, study).counts
            have = ", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no trials"
            raise HpsearchError(f"study {name!r} has no complete trial yet ({have})")
        test = evaluation_queries.study_evaluations(conn, study).get(trial.number)
    params, data = retrain_config(study, trial)
    if fmt is BestFormat.toml:
        sys.stdout.write(tables.best_toml(study, trial, params, data))
    elif fmt is BestFormat.json:
        record = {"study": study.name, **next(iter(tables.trials_sheet(
            study, [trial], list(trial.sampled),
            tests={trial.number: test} if test else None).records())),
            "resolved_params": params, "data": dataclasses.asdict(data)}
        sys.stdout.write(sheets.json_text(record) + "\n")
    else:
        emit(tables.best_sheet(study, trial, params, test), fmt.value)


def _print_front(name: str, fmt: BestFormat, db: str | None) -> None:
    from hpsearch.db import queries
    from hpsearch.errors import ConfigError
    from hpsearch.report import sheets, tables

    if fmt is BestFormat.toml:
        raise ConfigError("--pareto prints a table of trials: choose -f table, md, csv, tsv or "
                          "json (toml is one trial's config: `hpsearch best NAME -f toml`)")
    with connect(db) as conn:
        study = queries.find_study(conn, name)
        front = queries.pareto(conn, study)
    sheet = tables.front_sheet(study, front)
    if fmt is BestFormat.json:
        doc = {"study": study.name, "objectives": [o.label for o in front.objectives],
               "chosen": front.chosen, "candidates": front.candidates,
               "front": list(sheet.records())}
        sys.stdout.write(sheets.json_text(doc) + "\n")
        return
    emit(sheet, fmt.value)


@app.command()
def show(
    name: StudyArg,
    number: Annotated[int, typer.Argument(help="Trial number within the study.",
                                          metavar="NUMBER", min=0, max=INT_MAX)],
    fmt: Annotated[Format, typer.Option("--format", "-f", help=FORMAT_HELP + " csv holds the "
                                        "epoch rows only.")] = Format.table,
    db: DbOption = None,
) -> None:
    """One trial: its summary, every parameter (the sampled ones marked), every stored metric
    of every epoch, and why it was pruned or failed.

    Examples:

        hpsearch show try 3

        hpsearch show try 3 -f csv > trial-3-epochs.csv
    """
    from hpsearch.db import queries
    from hpsearch.report import sheets, tables

    with connect(db) as conn:
        study = queries.find_study(conn, name)
        trial = queries.get_trial(conn, study, number)
        epochs = queries.trial_epochs(conn, study, number)
    title = f"{study.name}: trial {number}, epochs"
    epoch_sheet = tables.epochs_sheet(title, epochs, with_trial=False)
    if fmt is Format.json:
        summary = next(iter(tables.trial_sheet(study, trial).records()))
        doc = {"study": study.name, "trial": summary, "sampled": list(trial.sampled),
               "epochs": list(epoch_sheet.records())}
        sys.stdout.write(sheets.json_text(doc) + "\n")
        return
    if fmt is Format.csv:
        emit(epoch_sheet, "csv")
        return
    reason = tables.reason_line(trial)
    if reason:
        epoch_sheet.notes.append(reason)
    if not epochs:
        epoch_sheet.notes.insert(0, "no epoch finished")
    emit(tables.trial_sheet(study, trial), fmt.value)
    if fmt is Format.md:
        sys.stdout.write("\n")
    emit(epoch_sheet, fmt.value)
