"""Reads that sum a study up: every study's counts and best (`studies`), one study's totals
(`compare`, the report's header), the live view of `hpsearch run`.

Aggregates in SQL, as in queries.py (its trial reads and the one definition of best).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, case, func, select
from sqlalchemy.sql.elements import ColumnElement

from hpsearch.db import optuna_tables
from hpsearch.db.evaluation_queries import latest_ensemble, study_evaluations
from hpsearch.db.models import TRIAL_STATES, Study, Trial, study_named
from hpsearch.db.optuna_link import link_problem
from hpsearch.db.queries import best_query, best_trial, utc
from hpsearch.db.records import RunningTrial, StudyInfo, StudyProgress, StudyStats, StudySummary
from hpsearch.objectives import ObjectiveSpec
from hpsearch.spec import stored_objectives


def _count_by_state() -> list[ColumnElement[int]]:
    return [func.coalesce(func.sum(case((Trial.state == s, 1), else_=0)), 0).label(s)
            for s in TRIAL_STATES]


def list_studies(conn: Connection) -> list[StudySummary]:
    """Every study with its trial counts by state, best value and last activity (one query,
    and one for the studies' objectives)."""
    # each study's best in either direction; its own first objective picks one
    best_max, best_min = (best_query(Study.id, Trial.value, objectives=(ObjectiveSpec(
        "val_acc", direction),)).correlate_except(Trial).scalar_subquery()
        for direction in ("max", "min"))
    last = func.max(func.coalesce(Trial.finished_at, Trial.started_at))
    query = (
        select(Study.id, Study.name, Study.dataset, Study.created_at, Study.note,
               Study.optuna_study_id, last.label("last"), best_max.label("best_max"),
               best_min.label("best_min"), *_count_by_state())
        .outerjoin(Trial, Trial.study_id == Study.id)
        .group_by(Study.id, Study.name, Study.dataset, Study.created_at, Study.note,
                  Study.optuna_study_id)
        .order_by(Study.created_at, Study.name)
    )
    out = []
    optuna = optuna_tables.optuna_studies(conn)
    specs = dict(conn.execute(select(Study.id, Study.spec)).all())
    # the central stop's state (hpsearch.search.control.CONTROL_ATTR)
    control = optuna_tables.study_user_attr(conn, optuna_tables.CONTROL_ATTR)
    notes = optuna_tables.dashboard_notes(conn)  # where hpsearch and optuna-dashboard keep them
    for row in conn.execute(query).all():
        counts = {s: int(getattr(row, s)) for s in TRIAL_STATES}
        created = utc(row.created_at)
        problem = link_problem(conn, optuna, row)
        objectives = stored_objectives(specs[row.id])
        best = row.best_max if objectives[0].maximize else row.best_min
        latest = max(filter(None, (created, _as_datetime(row.last))), default=None)
        out.append(StudySummary(row.name, row.dataset, created, latest, counts, best,
                                notes.get((row.optuna_study_id, None), row.note) or None,
                                problem.message if problem else None, objectives,
                                _halted(control.get(row.optuna_study_id))))
    return out


def _halted(control: Any) -> str | None:
    return control.get("state") if isinstance(control, dict) else None


def _as_datetime(value: Any) -> datetime | None:
    """max() over a DateTime column loses its type on SQLite and comes back as text."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return utc(value)



def study_stats(conn: Connection, study: StudyInfo) -> StudyStats:
    row = conn.execute(
        select(func.coalesce(func.sum(Trial.seconds), 0.0).label("compute"),
               func.min(Trial.started_at).label("first"), *_count_by_state())
        .where(Trial.study_id == study.id)
    ).one()
    best = best_trial(conn, study)
    first = _as_datetime(row.first)
    to_best = None
    if best is not None and best.finished_at is not None and first is not None:
        to_best = (best.finished_at - first).total_seconds()
    counts = {s: int(getattr(row, s)) for s in TRIAL_STATES}
    tests = study_evaluations(conn, study)  # in insertion order: the last evaluated is last
    test = tests.get(best.number) if best is not None else None
    if test is None and tests:
        test = list(tests.values())[-1]
    return StudyStats(study, counts, float(row.compute), first, best, to_best, test,
                      latest_ensemble(conn, study))


def read_progress(conn: Connection, name: str) -> StudyProgress:
    """Counts by state, the best so far and every running trial (the live view)."""
    study = conn.execute(select(Study.id, Study.spec, Study.optuna_study_id)
                         .where(study_named(name))).first()
    progress = StudyProgress()
    if study is None:
        return progress
    progress.halted = _halted(optuna_tables.study_user_attr(conn, optuna_tables.CONTROL_ATTR)
                              .get(study.optuna_study_id))
    study_id = study.id
    progress.counts = dict(conn.execute(select(Trial.state, func.count())
                                        .where(Trial.study_id == study_id)
                                        .group_by(Trial.state)).all())
    # the same rule as `hpsearch best`: pruned trials do not count
    best = conn.execute(best_query(study_id, Trial.number, Trial.value,
                                   objectives=stored_objectives(study.spec))).first()
    if best is not None:
        progress.best_number, progress.best_value = best
    progress.running = [
        RunningTrial(*row) for row in conn.execute(
            select(Trial.worker, Trial.number, Trial.epochs_run, Trial.value, Trial.precision,
                   Trial.device)
            .where(Trial.study_id == study_id, Trial.state == "running")
            .order_by(Trial.worker))]
    return progress
