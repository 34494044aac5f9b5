"""Rows of the results database as tests read, count and add them."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import inspect, select, text
from sqlalchemy.orm import Session

from hpsearch.db.engine import make_engine
from hpsearch.db.models import EnsembleEvaluation, Epoch, Evaluation, Study, Trial

OPTUNA_TABLES = ("studies", "study_directions", "study_user_attributes",
                 "study_system_attributes", "trials", "trial_params", "trial_values",
                 "trial_intermediate_values", "trial_user_attributes",
                 "trial_system_attributes", "trial_heartbeats")
OUR_TABLES = ("hps_study", "hps_trial", "hps_epoch", "hps_evaluation", "hps_ensemble")


def row_counts(url: str) -> dict[str, int]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            present = set(inspect(conn).get_table_names())  # an older schema has fewer
            return {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()
                    for t in OPTUNA_TABLES + OUR_TABLES if t in present}
    finally:
        engine.dispose()


def as_utc(value: Any) -> Any:
    """Datetimes compared as UTC: SQLite hands them back naive, PostgreSQL with a zone."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value


def add_ensemble(study_id: int, number: int) -> EnsembleEvaluation:
    """An ensemble row of the study (its members named by trial number)."""
    return EnsembleEvaluation(study_id=study_id, seed=0, selection="top",
                              members=[{"trial": number, "epochs": 3, "weight": 1.0}],
                              members_key=f"top/{number}:3:1.0", test_acc=0.9, test_loss=0.3,
                              seconds=5.0)


def study_rows(url: str, name: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of a study in our tables, without ids that a copy renumbers."""
    engine = make_engine(url)
    try:
        with Session(engine) as session:
            study = session.scalars(select(Study).where(Study.name == name)).one()
            trials = session.scalars(select(Trial).where(Trial.study_id == study.id)
                                     .order_by(Trial.number)).all()
            skip = {"id", "study_id", "trial_id", "optuna_trial_id"}

            def values(row: Any) -> tuple[Any, ...]:
                return tuple(as_utc(getattr(row, c.key)) for c in row.__table__.columns
                             if c.key not in skip)
            out: dict[str, list[tuple[Any, ...]]] = {"trial": [], "epoch": [], "evaluation": []}
            for trial in trials:
                out["trial"].append(values(trial))
                out["epoch"] += [(trial.number, *values(e)) for e in session.scalars(
                    select(Epoch).where(Epoch.trial_id == trial.id).order_by(Epoch.epoch))]
                out["evaluation"] += [(trial.number, *values(e)) for e in session.scalars(
                    select(Evaluation).where(Evaluation.trial_id == trial.id)
                    .order_by(Evaluation.seed))]
            out["ensemble"] = [values(e) for e in session.scalars(
                select(EnsembleEvaluation).where(EnsembleEvaluation.study_id == study.id)
                .order_by(EnsembleEvaluation.seed))]
            return out
    finally:
        engine.dispose()


def model_rows(url: str, model: type) -> list:
    """Every row of one of our tables, by id."""
    engine = make_engine(url)
    try:
        with Session(engine, expire_on_commit=False) as session:
            return list(session.scalars(select(model).order_by(model.id)))
    finally:
        engine.dispose()


def sqlite_copy(folder: Path, to: Path) -> str:
    """The URL of a copy, in `to`, of the SQLite database h.db in `folder` (a study run once
    per module; each test changes its own copy)."""
    for suffix in ("", "-wal", "-shm"):
        if (folder / f"h.db{suffix}").exists():
            shutil.copy(folder / f"h.db{suffix}", to / f"h.db{suffix}")
    return f"sqlite:///{to / 'h.db'}"
