"""Read-only commands that write studies out: compare (side by side), export (full-precision
files), report (HTML). Their shared formats and options: query_cmds.py; no torch, as there."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from hpsearch.cli.app import INT_MAX, DbOption, StudyArg, app
from hpsearch.cli.query_cmds import Format, FormatOption, connect, emit

ExportFormat = StrEnum("ExportFormat", "csv tsv json md")
What = StrEnum("What", "trials epochs")


@app.command()
def compare(
    names: Annotated[list[str], typer.Argument(help="Two or more study names (one works too).",
                                               metavar="NAME...")],
    fmt: FormatOption = Format.table,
    db: DbOption = None,
) -> None:
    """Studies side by side: best value, trials, pruned share, total compute time, time to
    reach the best (first trial's start to the best trial's finish), and each study's best
    params. Best: the complete trial with the best value of the study's first objective (see
    `hpsearch best --help`).

    Examples:

        hpsearch compare try try-small

        hpsearch compare try try-small -f md > comparison.md
    """
    from hpsearch.db import queries, summary_queries
    from hpsearch.report.tables import compare_sheet, param_names

    with connect(db) as conn:  # a study named twice is shown once
        stats = [summary_queries.study_stats(conn, queries.find_study(conn, n))
                 for n in dict.fromkeys(names)]
    # every study's parameters, each once, in the order they first appear
    union = dict.fromkeys(n for s in stats
                          for n in param_names(s.study.space, [s.best.sampled] if s.best else []))
    emit(compare_sheet(stats, list(union)), fmt.value)


@app.command()
def export(
    name: StudyArg,
    fmt: Annotated[ExportFormat, typer.Option(
        "--format", "-f", help="csv, tsv, json (an array of records) or md.")
    ] = ExportFormat.csv,
    what: Annotated[What, typer.Option(
        help="trials: one row per trial with every column and the sampled params; epochs: one "
        "row per trial and epoch with every stored metric.")] = What.trials,
    output: Annotated[str | None, typer.Option(
        "--output", "-o", help="Write to this file (atomically: complete or not at all; "
        "regular files only: a directory, a device such as /dev/null or a symlink out of its "
        "folder is refused). Default, or -: standard output.")] = None,
    db: DbOption = None,
) -> None:
    """Dump a study's trials or epochs in full precision, for scripts and notebooks.

    Examples:

        hpsearch export try -o trials.csv

        hpsearch export try --what epochs -f json -o epochs.json
    """
    from hpsearch.db import queries
    from hpsearch.files import STDOUT, output_text
    from hpsearch.report.sheets import write
    from hpsearch.report.tables import epochs_sheet, param_names, trials_sheet

    with connect(db) as conn:
        study = queries.find_study(conn, name)
        if what is What.trials:
            names = param_names(study.space, [queries.sampled_names(conn, study)])
            values = (queries.objective_values(conn, study) if len(study.objectives) > 1
                      else None)  # a multi-objective study's other objectives as columns
            sheet = trials_sheet(study, queries.iter_trials(conn, study), names, full=True,
                                 values=values)
        else:
            sheet = epochs_sheet(f"{study.name}: epochs", queries.iter_epochs(conn, study),
                                 with_trial=True)
        with output_text(output or STDOUT) as out:
            write(sheet, fmt.value, out)


@app.command()
def report(
    names: Annotated[list[str], typer.Argument(help="One or more study names; several are "
                                               "also overlaid.", metavar="NAME...")],
    output: Annotated[str | None, typer.Option(
        "--output", "-o", help="The HTML file to write (default report.html; - for standard "
        "output), or with --split the folder (default report/). Written atomically, regular "
        "files only: a directory, a device such as /dev/null or a symlink out of its folder "
        "is refused.")] = None,
    split: Annotated[bool, typer.Option(
        "--split", help="Write each figure as its own HTML file into a folder, with an "
        "index.html.")] = False,
    curves: Annotated[int, typer.Option(
        help="Trials drawn as individual curves (the best first); the others are summarised "
        "as a per-epoch percentile band.", min=1, max=INT_MAX)] = 50,
    db: DbOption = None,
) -> None:
    """A self-contained HTML report that works offline: learning curves, best-so-far over
    trials and time, a multi-objective study's Pareto front (the chosen trial marked),
    parallel coordinates, slices (the first objective against each parameter) and parameter
    importances (again with the pruned trials included), and every trial in a table sortable
    by clicking its headers.

    Examples:

        hpsearch report try -o try-report.html

        hpsearch report try try-small -o reports/ --split
    """
    from hpsearch.report.html import write_report, write_split
    from hpsearch.report.sections import build_report

    with connect(db) as conn:
        doc = build_report(conn, names, curves=curves)
    if split:
        written = write_split(doc, Path(output or "report"))
    else:
        written = write_report(doc, output or "report.html")
    if str(written) != "-":  # the report itself went to standard output
        typer.echo(f"wrote {written}")
