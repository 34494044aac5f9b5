"""The records the read queries return: plain frozen dataclasses, no SQL."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from hpsearch.objectives import DEFAULT, ObjectiveSpec
from hpsearch.params import DataOptions
from hpsearch.spec import StudyConfig, dimension_json


@dataclass(frozen=True)
class StudyInfo:
    id: int
    name: str
    optuna_study_id: int
    dataset: str
    config: StudyConfig  # the stored spec and settings, read back (never a study file)
    created_at: datetime | None
    note: str | None = None

    @property
    def seed(self) -> int:  # the split's; a trial's is this plus its first attempt's number
        return self.config.seed

    @property
    def objectives(self) -> tuple[ObjectiveSpec, ...]:
        return self.config.objectives

    @property
    def data(self) -> DataOptions:
        return self.config.data

    @property
    def space(self) -> dict[str, Any]:
        """Parameter name -> Optuna's distribution JSON ({"name": ..., "attributes": {...}}),
        in the study file's order: what reports draw axes and importances from."""
        return {name: dimension_json(dim) for name, dim in self.config.space.items()}


@dataclass(frozen=True)
class StudySummary:
    name: str
    dataset: str
    created_at: datetime | None
    last_activity: datetime | None
    counts: dict[str, int]  # trials by state, every state present
    best_value: float | None
    note: str | None = None
    # why Optuna no longer backs this study (deleted, renamed, re-created); None when it does
    problem: str | None = None
    objectives: tuple[ObjectiveSpec, ...] = DEFAULT  # best_value is the first one's
    halted: str | None = None  # "stopped" or "paused" (`hpsearch study stop|pause`); None: runs

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True)
class TrialRecord:
    id: int
    number: int
    state: str
    value: float | None
    best_epoch: int | None
    epochs_run: int
    n_params: int | None
    seconds: float | None
    started_at: datetime | None
    finished_at: datetime | None
    worker: str
    reason: str | None
    retried_from: int | None
    optuna_trial_id: int
    seed: int  # what it trained with (and what retraining it uses)
    params: dict[str, Any] = field(default_factory=dict)  # every parameter, resolved
    sampled: tuple[str, ...] = ()  # the names in params that the sampler chose
    tags: tuple[str, ...] = ()
    note: str | None = None
    precision: str | None = None
    device: str | None = None

    @property
    def sampled_params(self) -> dict[str, Any]:
        return {name: self.params[name] for name in self.sampled if name in self.params}


@dataclass(frozen=True)
class EpochRecord:
    trial_number: int
    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    lr: float
    seconds: float
    images_per_s: float


@dataclass(frozen=True)
class StudyStats:
    """One study's line in `compare` and in reports."""

    study: StudyInfo
    counts: dict[str, int]
    compute_seconds: float  # sum of trial durations: the machine time the study cost
    first_start: datetime | None
    best: TrialRecord | None
    time_to_best_s: float | None  # wall time from the first trial's start to the best's finish
    # the final test accuracy (`hpsearch evaluate`) of the best trial, else of the trial
    # evaluated last; None when nothing was evaluated
    test: EvaluationSummary | None = None
    # the study's latest ensemble (`hpsearch evaluate --ensemble K`); None when there is none
    ensemble: EnsembleSummary | None = None

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def pruned_share(self) -> float | None:
        return self.counts["pruned"] / self.total if self.total else None


@dataclass(frozen=True)
class EvaluationSummary:
    """A trial's final test accuracy over seeds: its retrainings with the epoch count of its
    latest evaluation (results for other epoch counts are not averaged in)."""

    trial_number: int
    epochs: int
    test_accs: tuple[float, ...]

    @property
    def seeds(self) -> int:
        return len(self.test_accs)

    @property
    def mean(self) -> float:
        return sum(self.test_accs) / len(self.test_accs)

    @property
    def std(self) -> float | None:
        """Sample standard deviation; None for a single seed."""
        if len(self.test_accs) < 2:
            return None
        mean = self.mean
        return (sum((a - mean) ** 2 for a in self.test_accs) / (len(self.test_accs) - 1)) ** 0.5

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "seeds": self.seeds, "epochs": self.epochs,
                "trial": self.trial_number}


@dataclass(frozen=True)
class EnsembleSummary:
    """One ensemble's test accuracy over seeds (its rows with the same members and weights)."""

    selection: str
    members: tuple[dict[str, Any], ...]  # {"trial", "epochs", "weight"}, in rank order
    test_accs: tuple[float, ...]
    tta: str | None = None
    tta_accs: tuple[float, ...] = ()  # with test-time augmentation, when `tta` is set

    @property
    def accuracy(self) -> EvaluationSummary:
        """Mean ± std over seeds, as for one trial (trial_number: the top member)."""
        return EvaluationSummary(self.members[0]["trial"], self.members[0]["epochs"],
                                 self.test_accs)

    def to_dict(self) -> dict[str, Any]:
        tta = EvaluationSummary(0, 0, self.tta_accs) if self.tta_accs else None
        return {"mean": self.accuracy.mean, "std": self.accuracy.std, "seeds": len(self.test_accs),
                "selection": self.selection, "members": list(self.members),
                "tta": self.tta, "tta_mean": tta.mean if tta else None,
                "tta_std": tta.std if tta else None}


@dataclass(frozen=True)
class TrialPoint:
    """The light columns of one trial, for best-so-far plots over thousands of trials."""

    number: int
    state: str
    value: float | None
    started_at: datetime | None
    finished_at: datetime | None


@dataclass(frozen=True)
class Curve:
    trial_number: int
    state: str
    epochs: list[int]
    values: dict[str, list[float]]  # metric → one value per epoch


@dataclass(frozen=True)
class Band:
    """Per-epoch percentiles of one metric over many trials."""

    metric: str
    epochs: list[int]
    n: list[int]  # trials that reached each epoch
    percentiles: dict[int, list[float]]  # e.g. 10 → the 10th percentile at each epoch


@dataclass
class RunningTrial:
    worker: str
    number: int
    epochs_run: int
    value: float | None
    precision: str | None = None  # what it runs with, "auto" resolved
    device: str | None = None


@dataclass(frozen=True)
class ParetoFront:
    """The complete trials of a multi-objective study that no other complete trial beats in
    every objective, best first objective first, with each one's objective values."""

    objectives: tuple[ObjectiveSpec, ...]
    trials: list[TrialRecord]
    values: dict[int, tuple[float, ...]]  # trial number -> one value per objective
    chosen: int | None  # `best_query`'s pick: always on the front
    candidates: int  # complete trials with every value known (the front is drawn from them)


@dataclass
class StudyProgress:
    """What the live view of `hpsearch run` shows."""

    counts: dict[str, int] = field(default_factory=dict)
    best_value: float | None = None
    best_number: int | None = None
    running: list[RunningTrial] = field(default_factory=list)
    # set by the live view while the database cannot be read: since when (monotonic seconds)
    unavailable_since: float | None = None
    halted: str | None = None  # "stopped" or "paused" (`hpsearch study stop|pause`)

    @property
    def finished(self) -> int:
        return self.counts.get("complete", 0) + self.counts.get("pruned", 0)


@dataclass(frozen=True)
class StoredEvaluation:
    seed: int
    epochs: int
    test_acc: float
    test_loss: float
    seconds: float
    checkpoint_path: str


@dataclass(frozen=True)
class RungStats:
    """One rung of a multi-fidelity budget, from the epoch rows that trained on its fraction."""

    fraction: float
    trials: int  # trials that trained on it
    last_epoch: int  # the rung ends after this epoch (cumulative)
    epochs: int  # epoch rows trained on it
    seconds: float
    best_val_acc: float | None
