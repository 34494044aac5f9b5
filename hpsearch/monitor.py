"""The live view of a running study, read from our tables (so it sees every worker)."""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.console import Group
from rich.table import Table
from rich.text import Text
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from hpsearch.config import StudyConfig
from hpsearch.db.models import Study, Trial
from hpsearch.db.queries import best_query


@dataclass
class RunningTrial:
    worker: str
    number: int
    epochs_run: int
    value: float | None


@dataclass
class StudyProgress:
    counts: dict[str, int] = field(default_factory=dict)
    best_value: float | None = None
    best_number: int | None = None
    running: list[RunningTrial] = field(default_factory=list)

    @property
    def finished(self) -> int:
        return self.counts.get("complete", 0) + self.counts.get("pruned", 0)


def read_progress(engine: Engine, name: str) -> StudyProgress:
    with Session(engine) as session:
        study_id = session.scalar(select(Study.id).where(Study.name == name))
        progress = StudyProgress()
        if study_id is None:
            return progress
        for state, count in session.execute(
                select(Trial.state, func.count()).where(Trial.study_id == study_id)
                .group_by(Trial.state)):
            progress.counts[state] = count
        # the same rule as `hpsearch best`: pruned trials do not count
        best = session.execute(best_query(study_id, Trial.number, Trial.value)).first()
        if best is not None:
            progress.best_number, progress.best_value = best
        progress.running = [
            RunningTrial(w, n, e, v) for w, n, e, v in session.execute(
                select(Trial.worker, Trial.number, Trial.epochs_run, Trial.value)
                .where(Trial.study_id == study_id, Trial.state == "running")
                .order_by(Trial.worker))]
    return progress


def summary_line(progress: StudyProgress, config: StudyConfig) -> str:
    """The study's counts and best value on one line (the live view's header, and what a log
    file gets when the output is not a terminal)."""
    c = progress.counts
    best = (f"{progress.best_value:.4f} (trial {progress.best_number})"
            if progress.best_value is not None else "–")
    return (f"finished {progress.finished}/{config.n_trials}  (complete {c.get('complete', 0)}, "
            f"pruned {c.get('pruned', 0)}, failed {c.get('failed', 0)})  best val acc {best}")


def render_progress(progress: StudyProgress, config: StudyConfig) -> Group:
    header = Text.assemble((config.name, "bold"), "  ", summary_line(progress, config))
    if not progress.running:
        return Group(header)
    table = Table(box=None, pad_edge=False)
    for column in ("worker", "trial", "epoch", "best val acc"):
        table.add_column(column)
    for run in progress.running:
        table.add_row(run.worker, str(run.number), f"{run.epochs_run}/{config.max_epochs}",
                      f"{run.value:.4f}" if run.value is not None else "–")
    return Group(header, table)
