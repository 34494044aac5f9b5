"""Our results schema, beside Optuna's own tables in the same database.

Table names start with `hps_` so they never collide with Optuna's (`studies`, `trials`, ...).
One row per epoch with one column per metric keeps comparison queries and curve exports simple.
"""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.sql.elements import ColumnElement

# Deterministic constraint names, so migrations can drop and alter them on every backend.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

TRIAL_STATES = ("running", "complete", "pruned", "failed")


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Study(Base):
    __tablename__ = "hps_study"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(512), unique=True)
    optuna_study_id: Mapped[int] = mapped_column(Integer)
    # what a trial means, written once at creation (hpsearch.spec.StudyConfig.spec_json)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    # how the search runs, changed by `hpsearch run --update` (StudyConfig.settings_json)
    settings: Mapped[dict[str, Any]] = mapped_column(JSON)
    dataset: Mapped[str] = mapped_column(String(64))
    note: Mapped[str | None] = mapped_column(Text)  # older notes (db/notes.py)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    trials: Mapped[list[Trial]] = relationship(back_populates="study")



def study_named(name: str) -> ColumnElement[bool]:
    """The one way to find a study by the name a user typed: as typed, or in Unicode's
    composed form (NFC), which new names are stored in. A terminal or file that sends 'café'
    decomposed (e + U+0301) still finds it."""
    return Study.name.in_({name, unicodedata.normalize("NFC", name)})

class Trial(Base):
    __tablename__ = "hps_trial"
    __table_args__ = (
        UniqueConstraint("study_id", "number", name="uq_hps_trial_study_number"),
        Index("ix_hps_trial_study_value", "study_id", "value"),
        Index("ix_hps_trial_study_state", "study_id", "state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("hps_study.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)  # Optuna's trial number within the study
    optuna_trial_id: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))  # one of TRIAL_STATES
    # the parameters that acted in the run, sampled and fixed (rows of studies created before
    # conditional spaces: every parameter, TrialParams.to_dict())
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    sampled: Mapped[list[str]] = mapped_column(JSON, default=list)  # which of them were sampled
    # the seed it trains with: the study's seed plus the number of its first attempt (a retry
    # resumes that run), set once when it starts; what retraining it uses too
    seed: Mapped[int] = mapped_column(Integer)
    value: Mapped[float | None] = mapped_column(Float)  # best validation accuracy so far
    best_epoch: Mapped[int | None] = mapped_column(Integer)
    epochs_run: Mapped[int] = mapped_column(Integer, default=0)
    n_params: Mapped[int | None] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    seconds: Mapped[float | None] = mapped_column(Float)
    worker: Mapped[str] = mapped_column(String(255))  # host:pid
    reason: Mapped[str | None] = mapped_column(Text)  # why it was pruned or failed
    retried_from: Mapped[int | None] = mapped_column(Integer)  # trial number it resumes
    precision: Mapped[str | None] = mapped_column(String(16))  # what it ran with: fp32 | bf16
    device: Mapped[str | None] = mapped_column(String(64))  # e.g. cpu, cuda:0
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)  # `hpsearch tag`
    note: Mapped[str | None] = mapped_column(Text)  # older notes (db/notes.py)

    study: Mapped[Study] = relationship(back_populates="trials")
    epochs: Mapped[list[Epoch]] = relationship(back_populates="trial", order_by="Epoch.epoch")


class Epoch(Base):
    __tablename__ = "hps_epoch"
    __table_args__ = (UniqueConstraint("trial_id", "epoch", name="uq_hps_epoch_trial_epoch"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    trial_id: Mapped[int] = mapped_column(ForeignKey("hps_trial.id", ondelete="CASCADE"))
    epoch: Mapped[int] = mapped_column(Integer)
    train_loss: Mapped[float] = mapped_column(Float)
    train_acc: Mapped[float] = mapped_column(Float)
    val_loss: Mapped[float] = mapped_column(Float)
    val_acc: Mapped[float] = mapped_column(Float)
    lr: Mapped[float] = mapped_column(Float)
    seconds: Mapped[float] = mapped_column(Float)
    images_per_s: Mapped[float] = mapped_column(Float)
    # the share of the training split this epoch trained on ([budget] rungs); NULL: all of it
    fraction: Mapped[float | None] = mapped_column(Float)

    trial: Mapped[Trial] = relationship(back_populates="epochs")


EPOCH_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds",
                 "images_per_s")


class Evaluation(Base):
    """One final retraining of a trial's configuration on train + validation, scored ONCE on
    the test set (`hpsearch evaluate`). Several seeds give several rows."""

    __tablename__ = "hps_evaluation"
    __table_args__ = (UniqueConstraint("trial_id", "seed", "epochs",
                                       name="uq_hps_evaluation_trial_seed_epochs"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    trial_id: Mapped[int] = mapped_column(ForeignKey("hps_trial.id", ondelete="CASCADE"))
    seed: Mapped[int] = mapped_column(Integer)
    epochs: Mapped[int] = mapped_column(Integer)
    test_acc: Mapped[float] = mapped_column(Float)
    test_loss: Mapped[float] = mapped_column(Float)
    # per epoch of the retraining: epoch, train_loss, train_acc, lr, seconds
    curve: Mapped[list[dict[str, float]]] = mapped_column(JSON)
    checkpoint_path: Mapped[str] = mapped_column(Text)  # the final weights (a state dict)
    seconds: Mapped[float] = mapped_column(Float)  # retraining plus the test pass
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    trial: Mapped[Trial] = relationship()


class EnsembleEvaluation(Base):
    """One ensemble of a study's trials (`hpsearch evaluate --ensemble K`) for one seed: each
    member retrained on train + validation (its own result is an ordinary hps_evaluation row),
    their softmax outputs averaged with the member weights, scored ONCE on the test set.

    An ensemble belongs to the study rather than to one trial; its members are named by trial
    number in `members`, so the row survives `study copy` unchanged."""

    __tablename__ = "hps_ensemble"
    __table_args__ = (UniqueConstraint("study_id", "seed", "members_key",
                                       name="uq_hps_ensemble_study_seed_members_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("hps_study.id", ondelete="CASCADE"))
    seed: Mapped[int] = mapped_column(Integer)
    selection: Mapped[str] = mapped_column(String(16))  # "top" (equal weights) or "greedy"
    # [{"trial": number, "epochs": n, "weight": w}, ...] in rank order; weights sum to 1
    members: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    # the members (and test-time augmentation) as one string: what the unique key compares
    members_key: Mapped[str] = mapped_column(String(1000))
    test_acc: Mapped[float] = mapped_column(Float)
    test_loss: Mapped[float] = mapped_column(Float)
    tta: Mapped[str | None] = mapped_column(String(16))  # "flip" or None
    test_acc_tta: Mapped[float | None] = mapped_column(Float)  # with the outputs of flipped
    test_loss_tta: Mapped[float | None] = mapped_column(Float)  # test images averaged in
    seconds: Mapped[float] = mapped_column(Float)  # retrainings plus the test pass
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
