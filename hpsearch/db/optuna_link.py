"""Our study rows are tied to Optuna's by id (hps_study.optuna_study_id), never by name.

Optuna's own tools can delete, rename or re-create a study behind our back (`optuna
delete-study`, optuna-dashboard's rename). Every command that opens a study checks the link
first, so results are never read as, or written into, a study they do not belong to. On
SQLite a re-created study often gets the deleted one's id back, so the Optuna study also
carries a marker naming our row (optuna_tables.MARKER_KEY), written with our row; migration
0004 marks the Optuna studies of rows recorded before.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, select

from hpsearch.db import optuna_tables as ot
from hpsearch.db.models import Trial
from hpsearch.errors import HpsearchError


class BrokenLink(HpsearchError):
    """Optuna no longer has the study our rows were recorded for, under that name."""


def row_marker(row_id: int, created_at: datetime) -> str:
    """What the Optuna study of our row `row_id` carries as its marker."""
    if created_at.tzinfo is None:  # SQLite hands back naive UTC
        created_at = created_at.replace(tzinfo=UTC)
    return f"{row_id}/{created_at.astimezone(UTC).isoformat()}"


@dataclass(frozen=True)
class LinkProblem:
    kind: str  # "deleted", "re-created" or "renamed" (in Optuna)
    message: str  # one line: what happened and what to run


def link_problem(conn: Connection, optuna: dict[int, ot.OptunaStudy], row: Any
                 ) -> LinkProblem | None:
    """None when Optuna's study behind our row `row` (an hps_study row) exists, is called
    row.name and is the one the row was recorded for; else what happened and what to run.
    `optuna`: every Optuna study (optuna_tables.optuna_studies)."""
    name, linked = row.name, row.optuna_study_id
    theirs = optuna.get(linked)
    drop = f"run `hpsearch study delete {name!r} --yes` to drop"
    if theirs is None or not _same_study(theirs, row):
        others = [i for i, s in optuna.items() if s.name == name]
        if others:
            return LinkProblem("re-created", (
                f"study {name!r} was deleted and re-created in Optuna (Optuna study id "
                f"{others[0]} is not the one its results were recorded for); {drop} the old "
                "results (Optuna's new study stays)"))
        return LinkProblem("deleted", f"study {name!r} was deleted in Optuna (study id "
                                      f"{linked} is gone); {drop} its orphaned results")
    if theirs.name != name:
        return LinkProblem("renamed", (
            f"study {name!r} was renamed to {theirs.name!r} in Optuna; run "
            f"`hpsearch study rename {name!r} {theirs.name!r}` to follow it"))
    return None


def _same_study(theirs: ot.OptunaStudy, row: Any) -> bool:
    return theirs.marker == row_marker(row.id, row.created_at)


def latest_trial_matches(conn: Connection, row: Any) -> bool:
    """For rows recorded before markers (migration 0004 marks them): does our latest trial row
    match the Optuna trial it names, by id, study, number and sampled parameter names? The ids
    alone prove nothing, SQLite re-uses them. No trial rows: nothing to mix up, so yes."""
    latest = conn.execute(select(Trial.optuna_trial_id, Trial.number, Trial.sampled)
                          .where(Trial.study_id == row.id)
                          .order_by(Trial.number.desc()).limit(1)).first()
    if latest is None:
        return True
    found = conn.execute(select(ot.trials.c.number).where(
        ot.trials.c.trial_id == latest.optuna_trial_id,
        ot.trials.c.study_id == row.optuna_study_id)).first()
    names = conn.scalars(select(ot.trial_params.c.param_name).where(
        ot.trial_params.c.trial_id == latest.optuna_trial_id)).all()
    return (found is not None and found.number == latest.number
            and set(names) == set(latest.sampled or ()))


def check_link(conn: Connection, row: Any) -> None:
    """Raise BrokenLink (one line) unless Optuna's study behind our row is still its own."""
    problem = link_problem(conn, ot.optuna_studies(conn), row)
    if problem is not None:
        raise BrokenLink(problem.message)
