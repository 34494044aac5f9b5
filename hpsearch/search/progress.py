"""The live view of a running study: rendering only (the numbers come from
`hpsearch.db.summary_queries.read_progress`, which reads our tables and so sees every worker)."""

from __future__ import annotations

import time

from rich.console import Group
from rich.table import Table
from rich.text import Text

from hpsearch.db.records import StudyProgress
from hpsearch.spec import StudyConfig


def summary_line(progress: StudyProgress, config: StudyConfig) -> str:
    """The study's counts and best value on one line (the live view's header, and what a log
    file gets when the output is not a terminal)."""
    c = progress.counts
    best = (f"{progress.best_value:.4f} (trial {progress.best_number})"
            if progress.best_value is not None else "–")
    first = config.objectives[0]
    line = (f"finished {progress.finished}/{config.n_trials}  (complete {c.get('complete', 0)}, "
            f"pruned {c.get('pruned', 0)}, failed {c.get('failed', 0)})  {first.title} {best}")
    if config.multi_objective:  # the best above is the chosen trial: the front's best first
        line += f"  objectives {', '.join(o.label for o in config.objectives)}"
        if config.pruner != "none":
            line += f", pruned on {config.pruned.measure}"
    if progress.halted is not None:  # `hpsearch study stop|pause`: the workers are leaving
        line += f"  study {progress.halted}, workers leaving"
    if progress.unavailable_since is not None:
        waited = time.monotonic() - progress.unavailable_since
        line += f"  database unavailable for {waited:.0f} s, workers waiting"
    return line


def render_progress(progress: StudyProgress, config: StudyConfig,
                    budget_line: str | None = None) -> Group:
    """`budget_line`: where an hours budget stands (search/budget.py's progress_line)."""
    header = Text.assemble((config.name, "bold"), "  ", summary_line(progress, config))
    if budget_line is not None:
        header = Text("\n").join([header, Text(budget_line)])
    if not progress.running:
        return Group(header)
    table = Table(box=None, pad_edge=False)
    for column in ("worker", "trial", "epoch", config.objectives[0].title, "runs on"):
        table.add_column(column)
    for run in progress.running:
        runs_on = " ".join(filter(None, (run.device, run.precision))) or "–"
        table.add_row(run.worker, str(run.number), f"{run.epochs_run}/{config.max_epochs}",
                      f"{run.value:.4f}" if run.value is not None else "–", runs_on)
    return Group(header, table)
