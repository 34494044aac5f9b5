"""Every read of the results tables, in one place.

SQLAlchemy 2.x `select()` with bound parameters only. Aggregates (counts, best values, quantiles)
are computed in SQL so that `best` and `trials --top` stay fast on studies with 10,000 trials:
nothing here loads a whole study into Python unless the caller asks for every row.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Row,
    Select,
    case,
    func,
    select,
)
from sqlalchemy.sql.elements import ColumnElement

from hpsearch.db import optuna_tables
from hpsearch.db.engine import mask_url
from hpsearch.db.models import (
    EPOCH_METRICS,
    TRIAL_STATES,
    EnsembleEvaluation,
    Epoch,
    Evaluation,
    Study,
    Trial,
)
from hpsearch.db.optuna_link import check_link, link_problem
from hpsearch.errors import ConfigError, HpsearchError
from hpsearch.objectives import DEFAULT, EPOCH_MEASURES, ObjectiveSpec, pareto_front
from hpsearch.objectives import stored_objectives as _stored_objectives
from hpsearch.params import PARAM_NAMES, param_type

# Sort keys of `trials --sort`; `value` (also called best_<first measure>, e.g. best_val_acc)
# sorts best first in the first objective's direction, every other column ascending.
SORT_COLUMNS: dict[str, Any] = {
    "value": Trial.value,
    "number": Trial.number,
    "state": Trial.state,
    "best_epoch": Trial.best_epoch,
    "epochs_run": Trial.epochs_run,
    "seconds": Trial.seconds,
    "n_params": Trial.n_params,
    "started_at": Trial.started_at,
    "finished_at": Trial.finished_at,
}
QUANTILES = (10, 50, 90)  # percentiles of the per-epoch band in reports
KNOWN_NAMES_SHOWN = 10  # an unknown-study error lists at most this many real names


@dataclass(frozen=True)
class StudyInfo:
    id: int
    name: str
    optuna_study_id: int
    dataset: str
    config: dict[str, Any]  # the study file as loaded, kept for the record; never re-parsed
    planned_trials: int
    created_at: datetime | None
    # parameter name -> Optuna distribution JSON ({"name": ..., "attributes": {...}}), in the
    # study file's order: what reports draw axes and importances from
    space: dict[str, Any] = field(default_factory=dict)
    note: str | None = None

    @property
    def seed(self) -> int:
        """The study's stored seed ([study] seed, default 0): trials train with it plus their
        original number, and split train/validation with it."""
        study = self.config.get("study", {}) if isinstance(self.config, dict) else {}
        seed = study.get("seed", 0) if isinstance(study, dict) else 0
        return seed if isinstance(seed, int) and not isinstance(seed, bool) else 0

    @property
    def objectives(self) -> tuple[ObjectiveSpec, ...]:
        """What the study optimises, first objective first ([study] metric or objectives)."""
        return _stored_objectives(self.config)

    @property
    def data(self) -> dict[str, Any]:
        """The stored [data] table (dataset, subset, ...) that retraining needs."""
        data = self.config.get("data", {}) if isinstance(self.config, dict) else {}
        return dict(data) if isinstance(data, dict) else {}


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


def utc(value: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes; everything we store is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _masked(conn: Connection) -> str:
    return mask_url(conn.engine.url.render_as_string(hide_password=False))


def study_names(conn: Connection, limit: int | None = None) -> list[str]:
    return list(conn.scalars(select(Study.name).order_by(Study.name).limit(limit)))


def find_study(conn: Connection, name: str) -> StudyInfo:
    """The study called `name`, or a one-line error that lists the studies that do exist, or
    says what happened to the Optuna study behind it."""
    study = conn.execute(select(Study.__table__).where(Study.name == name)).first()
    if study is None:
        known = study_names(conn, KNOWN_NAMES_SHOWN + 1)
        if not known:
            hint = "the database holds no studies yet"
        else:
            more = ", ..." if len(known) > KNOWN_NAMES_SHOWN else ""
            hint = "known: " + ", ".join(repr(n) for n in known[:KNOWN_NAMES_SHOWN]) + more
        raise HpsearchError(f"unknown study {name!r} in {_masked(conn)} ({hint})")
    check_link(conn, study)
    return StudyInfo(study.id, study.name, study.optuna_study_id, study.dataset,
                     study.config or {}, study.n_trials, utc(study.created_at),
                     dict(study.space or {}), study.note)


# --- the one definition of "best" --------------------------------------------------------

BEST_STATES = ("complete",)


def best_query(study_id: Any, *columns: Any,
               objectives: tuple[ObjectiveSpec, ...] = DEFAULT) -> Select[Any]:
    """THE definition of a study's best trial, used by every view (`studies`, `trials`, `best`,
    `compare`, `report`, `evaluate` and the live view of `hpsearch run`).

    Like Optuna's `study.best_trial`: only COMPLETE trials count. A pruned trial's value is an
    intermediate result at a smaller budget (the epoch it was stopped at), so it is not
    comparable with a finished trial's, and a trial Optuna stopped for looking bad must never be
    handed out as the one to retrain. The value (the first objective's best epoch) must be
    present and finite (NULL, NaN and infinities are not results; PostgreSQL would sort NaN
    above every number); the best is the highest for a maximised objective, the lowest for a
    minimised one. Ties go to the next objectives in turn (so in a multi-objective study the
    chosen trial is the front's best in the first objective: no trial dominates it), then to
    the earliest trial number, as in Optuna. `ORDER BY value LIMIT 1` walks the
    (study_id, value) index instead of reading every trial.

    `study_id` may be a column (a correlated subquery, as `list_studies` uses it).
    """
    return ranked_query(study_id, *columns, objectives=objectives).limit(1)


def ranked_query(study_id: Any, *columns: Any,
                 objectives: tuple[ObjectiveSpec, ...] = DEFAULT) -> Select[Any]:
    """`best_query` without its LIMIT: the trials that may be best, best first. The top K of
    it are the study's K best trials (`evaluate --ensemble K`)."""
    first, *rest = objectives
    order = [_ordered(Trial.value, first)]
    order += [_ordered(_measure_column(spec), spec) for spec in rest]
    return (select(*columns).where(Trial.study_id == study_id, *_eligible())
            .order_by(*order, Trial.number))


def _ordered(column: Any, spec: ObjectiveSpec) -> ColumnElement[Any]:
    return column.desc() if spec.maximize else column.asc()


def _measure_column(spec: ObjectiveSpec) -> Any:
    """One trial's value of an objective in SQL (hpsearch.objectives defines each measure)."""
    if spec.measure == "params":
        return Trial.n_params
    if spec.measure in EPOCH_MEASURES:
        column = getattr(Epoch, spec.measure)
        best = func.max(column) if spec.maximize else func.min(column)
    else:  # seconds_per_epoch
        best = func.avg(Epoch.seconds)
    return select(best).where(Epoch.trial_id == Trial.id).scalar_subquery()


def _eligible() -> tuple[ColumnElement[bool], ...]:
    """`best_query`'s filter: the trials that may be best (NULL fails both comparisons)."""
    return (Trial.state.in_(BEST_STATES), Trial.value > float("-inf"),
            Trial.value < float("inf"))


def counts_for_best(state: str, value: float | None) -> bool:
    """`_eligible` for one trial already in memory (best-so-far curves)."""
    return state in BEST_STATES and value is not None and math.isfinite(value)


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
    configs = dict(conn.execute(select(Study.id, Study.config)).all())
    for row in conn.execute(query).all():
        counts = {s: int(getattr(row, s)) for s in TRIAL_STATES}
        created = utc(row.created_at)
        problem = link_problem(conn, optuna, row)
        objectives = _stored_objectives(configs.get(row.id))
        best = row.best_max if objectives[0].maximize else row.best_min
        out.append(StudySummary(row.name, row.dataset, created,
                                _latest(created, _as_datetime(row.last)), counts, best,
                                row.note, problem.message if problem else None, objectives))
    return out


def _as_datetime(value: Any) -> datetime | None:
    """max() over a DateTime column loses its type on SQLite and comes back as text."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return utc(value)


def _latest(*values: datetime | None) -> datetime | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def _trial_record(trial: Row[Any]) -> TrialRecord:
    return TrialRecord(
        id=trial.id, number=trial.number, state=trial.state, value=trial.value,
        best_epoch=trial.best_epoch, epochs_run=trial.epochs_run, n_params=trial.n_params,
        seconds=trial.seconds, started_at=utc(trial.started_at),
        finished_at=utc(trial.finished_at), worker=trial.worker, reason=trial.reason,
        retried_from=trial.retried_from, optuna_trial_id=trial.optuna_trial_id,
        params=dict(trial.params or {}), sampled=tuple(trial.sampled or ()),
        tags=tuple(trial.tags or ()), note=trial.note, precision=trial.precision,
        device=trial.device,
    )


def _sort_key(sort: str, study: StudyInfo) -> ColumnElement[Any]:
    """`value`, `-seconds`, `lr`: a column or a parameter; '-' reverses the order. The value
    (also named by its column, e.g. best_val_acc) sorts best first."""
    reverse = sort.startswith("-")
    name = sort.lstrip("-+")
    first = study.objectives[0]
    if name == first.key:
        name = "value"
    if name in SORT_COLUMNS:
        key = SORT_COLUMNS[name]
    elif name in PARAM_NAMES:
        kind = param_type(name)
        item = Trial.params[name]
        key = (item.as_string() if kind is str else item.as_boolean() if kind is bool
               else item.as_float())
    else:
        raise ConfigError(f"unknown sort column {name!r} (choose from: {first.key}, "
                          f"{', '.join(SORT_COLUMNS)}, or a parameter name)")
    descending = (name == "value" and first.maximize) != reverse
    return (key.desc() if descending else key.asc()).nulls_last()


def leaderboard(conn: Connection, study: StudyInfo, *, top: int | None = None,
                states: Sequence[str] = (), sort: str = "value") -> list[TrialRecord]:
    """Trials ordered by `sort` (best value first by default), limited in SQL to `top`."""
    bad = sorted(set(states) - set(TRIAL_STATES))
    if bad:
        raise ConfigError(f"unknown state {bad[0]!r} (choose from: {', '.join(TRIAL_STATES)})")
    query = select(Trial.__table__).where(Trial.study_id == study.id)
    if states:
        query = query.where(Trial.state.in_(list(states)))
    query = query.order_by(_sort_key(sort, study), Trial.number).limit(top)
    return [_trial_record(t) for t in conn.execute(query)]


def best_trial(conn: Connection, study: StudyInfo) -> TrialRecord | None:
    """The study's best trial by `best_query`'s rule, or None before any trial completes."""
    trial = conn.execute(best_query(study.id, Trial.__table__,
                                    objectives=study.objectives)).first()
    return _trial_record(trial) if trial is not None else None


def top_trials(conn: Connection, study: StudyInfo, k: int) -> list[TrialRecord]:
    """The study's `k` best trials by `best_query`'s rule, best first (fewer if fewer count)."""
    return [_trial_record(t) for t in conn.execute(ranked_query(
        study.id, Trial.__table__, objectives=study.objectives).limit(k))]


def get_trial(conn: Connection, study: StudyInfo, number: int) -> TrialRecord:
    trial = conn.execute(select(Trial.__table__).where(Trial.study_id == study.id,
                                                       Trial.number == number)).first()
    if trial is None:
        low, high = conn.execute(select(func.min(Trial.number), func.max(Trial.number))
                                 .where(Trial.study_id == study.id)).one()
        have = f"trials {low}..{high}" if low is not None else "no trials yet"
        raise HpsearchError(f"study {study.name!r} has no trial {number} ({have})")
    return _trial_record(trial)


def iter_trials(conn: Connection, study: StudyInfo) -> Iterator[TrialRecord]:
    """Every trial of the study in trial-number order, streamed."""
    query = (select(Trial.__table__).where(Trial.study_id == study.id).order_by(Trial.number)
             .execution_options(yield_per=2000))
    for trial in conn.execute(query):
        yield _trial_record(trial)


def sampled_names(conn: Connection, study: StudyInfo) -> list[str]:
    """Every parameter name the study's trials sampled, in order of first use."""
    keys: dict[str, None] = {}
    query = (select(Trial.sampled).where(Trial.study_id == study.id).order_by(Trial.number)
             .execution_options(yield_per=5000))
    for sampled in conn.scalars(query):
        keys.update(dict.fromkeys(sampled or ()))
    return list(keys)


def _epoch_query(study: StudyInfo) -> Any:
    metrics = [getattr(Epoch, m) for m in EPOCH_METRICS]
    return (select(Trial.number, Epoch.epoch, *metrics)
            .join(Trial, Trial.id == Epoch.trial_id)
            .where(Trial.study_id == study.id))


def iter_epochs(conn: Connection, study: StudyInfo) -> Iterator[EpochRecord]:
    """Every epoch row of the study, ordered by trial number and epoch, streamed."""
    query = (_epoch_query(study).order_by(Trial.number, Epoch.epoch)
             .execution_options(yield_per=5000))
    for row in conn.execute(query):
        yield EpochRecord(*row)


def trial_epochs(conn: Connection, study: StudyInfo, number: int) -> list[EpochRecord]:
    query = _epoch_query(study).where(Trial.number == number).order_by(Epoch.epoch)
    return [EpochRecord(*row) for row in conn.execute(query)]


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


def latest_ensemble(conn: Connection, study: StudyInfo) -> EnsembleSummary | None:
    """The study's most recently stored ensemble, over the seeds it was scored with."""
    latest = conn.execute(
        select(EnsembleEvaluation.members_key).where(EnsembleEvaluation.study_id == study.id)
        .order_by(EnsembleEvaluation.created_at.desc(), EnsembleEvaluation.id.desc()).limit(1)
    ).scalar()
    if latest is None:
        return None
    rows = conn.execute(
        select(EnsembleEvaluation.__table__).where(EnsembleEvaluation.study_id == study.id,
                                                   EnsembleEvaluation.members_key == latest)
        .order_by(EnsembleEvaluation.seed)).all()
    return EnsembleSummary(rows[0].selection, tuple(rows[0].members),
                           tuple(r.test_acc for r in rows), rows[0].tta,
                           tuple(r.test_acc_tta for r in rows if r.test_acc_tta is not None))


def stored_ensembles(conn: Connection, study: StudyInfo, members_key: str,
                     seeds: Sequence[int]) -> dict[int, Any]:
    """The study's stored results of one ensemble (by `members_key`) for these seeds."""
    rows = conn.execute(select(EnsembleEvaluation.__table__).where(
        EnsembleEvaluation.study_id == study.id, EnsembleEvaluation.members_key == members_key,
        EnsembleEvaluation.seed.in_(seeds))).all()
    return {row.seed: row for row in rows}


def study_evaluations(conn: Connection, study: StudyInfo) -> dict[int, EvaluationSummary]:
    """Final test accuracy by trial number, for the study's evaluated trials (few rows: one per
    retraining), ordered by when each trial was last evaluated."""
    query = (select(Trial.number, Evaluation.epochs, Evaluation.test_acc)
             .join(Trial, Trial.id == Evaluation.trial_id)
             .where(Trial.study_id == study.id)
             .order_by(Evaluation.created_at, Evaluation.id))
    by_trial: dict[int, list[tuple[int, float]]] = {}
    for number, epochs, acc in conn.execute(query):
        rows = by_trial.pop(number, [])  # re-inserted: the last evaluated trial comes last
        rows.append((epochs, acc))
        by_trial[number] = rows
    out: dict[int, EvaluationSummary] = {}
    for number, rows in by_trial.items():
        epochs = rows[-1][0]  # the epoch count of the trial's latest evaluation
        out[number] = EvaluationSummary(number, epochs, tuple(a for e, a in rows if e == epochs))
    return out


@dataclass(frozen=True)
class RungStats:
    """One rung of a multi-fidelity budget, from the epoch rows that trained on its fraction."""

    fraction: float
    trials: int  # trials that trained on it
    last_epoch: int  # the rung ends after this epoch (cumulative)
    epochs: int  # epoch rows trained on it
    seconds: float
    best_val_acc: float | None


def rung_stats(conn: Connection, study: StudyInfo) -> list[RungStats]:
    """Per training fraction (smallest first): trials, epochs, time and best val acc; empty
    for a study without rungs (its rows have no fraction)."""
    query = (select(Epoch.fraction, func.count(func.distinct(Epoch.trial_id)),
                    func.max(Epoch.epoch), func.count(), func.sum(Epoch.seconds),
                    func.max(Epoch.val_acc))
             .join(Trial, Trial.id == Epoch.trial_id)
             .where(Trial.study_id == study.id, Epoch.fraction.is_not(None))
             .group_by(Epoch.fraction).order_by(Epoch.fraction))
    return [RungStats(float(f), int(t), int(e), int(n), float(s or 0.0), a)
            for f, t, e, n, s, a in conn.execute(query)]


def trial_points(conn: Connection, study: StudyInfo) -> list[TrialPoint]:
    query = (select(Trial.number, Trial.state, Trial.value, Trial.started_at, Trial.finished_at)
             .where(Trial.study_id == study.id).order_by(Trial.number))
    return [TrialPoint(r.number, r.state, r.value, utc(r.started_at), utc(r.finished_at))
            for r in conn.execute(query)]


def complete_params(conn: Connection, study: StudyInfo, *, with_pruned: bool = False
                    ) -> list[tuple[int, float, dict]]:
    """(number, value, sampled params) of every trial that counts for best (`best_query`'s
    rule), for parallel coordinates, slices and importances; `with_pruned` adds the pruned
    trials with a finite value (their best before they were stopped, at a smaller budget)."""
    eligible = _eligible()
    if with_pruned:
        eligible = (Trial.state.in_((*BEST_STATES, "pruned")), *eligible[1:])
    query = (select(Trial.number, Trial.value, Trial.params, Trial.sampled)
             .where(Trial.study_id == study.id, *eligible).order_by(Trial.number))
    return [(r.number, r.value, {k: (r.params or {})[k] for k in r.sampled or ()
                                 if k in (r.params or {})})
            for r in conn.execute(query)]


def top_curves(conn: Connection, study: StudyInfo, metrics: Sequence[str],
               top: int) -> list[Curve]:
    """Per-epoch curves of the `top` trials by value (trials without a value come last)."""
    _check_metrics(metrics)
    ranked = (select(Trial.id).where(Trial.study_id == study.id)
              .order_by(_best_first(study), Trial.number).limit(top))
    query = (select(Trial.number, Trial.state, Epoch.epoch,
                    *[getattr(Epoch, m) for m in metrics])
             .join(Trial, Trial.id == Epoch.trial_id)
             .where(Epoch.trial_id.in_(ranked.scalar_subquery()))
             .order_by(_best_first(study), Trial.number, Epoch.epoch))
    curves: dict[int, Curve] = {}
    for row in conn.execute(query):
        curve = curves.get(row.number)
        if curve is None:
            curve = curves[row.number] = Curve(row.number, row.state, [],
                                               {m: [] for m in metrics})
        curve.epochs.append(row.epoch)
        for metric in metrics:
            curve.values[metric].append(getattr(row, metric))
    return list(curves.values())


def _best_first(study: StudyInfo) -> ColumnElement[Any]:
    """Trials by value, best first in the first objective's direction, no value last."""
    return _ordered(Trial.value, study.objectives[0]).nulls_last()


def epoch_band(conn: Connection, study: StudyInfo, metric: str, *,
               skip_top: int) -> Band | None:
    """Nearest-rank percentiles of `metric` at every epoch over all trials but the best
    `skip_top`, computed in SQL with window functions (SQLite >= 3.25 and PostgreSQL alike)."""
    _check_metrics([metric])
    top = (select(Trial.id).where(Trial.study_id == study.id)
           .order_by(_best_first(study), Trial.number).limit(skip_top))
    value = getattr(Epoch, metric)
    ranked = (
        select(Epoch.epoch.label("epoch"), value.label("v"),
               func.row_number().over(partition_by=Epoch.epoch, order_by=value).label("rn"),
               func.count().over(partition_by=Epoch.epoch).label("n"))
        .join(Trial, Trial.id == Epoch.trial_id)
        .where(Trial.study_id == study.id, Epoch.trial_id.not_in(top.scalar_subquery()))
        .subquery()
    )
    # The p-th percentile is the smallest value whose rank r satisfies 100 * r >= p * n.
    picks = [func.min(case((ranked.c.rn * 100 >= ranked.c.n * p, ranked.c.v)))
             .label(f"p{p}") for p in QUANTILES]
    query = (select(ranked.c.epoch, func.max(ranked.c.n).label("n"), *picks)
             .group_by(ranked.c.epoch).order_by(ranked.c.epoch))
    rows = conn.execute(query).all()
    if not rows:
        return None
    return Band(metric, [r.epoch for r in rows], [r.n for r in rows],
                {p: [float(getattr(r, f"p{p}")) for r in rows] for p in QUANTILES})


def _check_metrics(metrics: Sequence[str]) -> None:
    unknown = [m for m in metrics if m not in EPOCH_METRICS]
    if unknown:
        raise ValueError(f"unknown epoch metric(s): {', '.join(unknown)}")


def read_progress(conn: Connection, name: str) -> StudyProgress:
    """Counts by state, the best so far and every running trial (the live view)."""
    study = conn.execute(select(Study.id, Study.config).where(Study.name == name)).first()
    progress = StudyProgress()
    if study is None:
        return progress
    study_id = study.id
    for state, count in conn.execute(
            select(Trial.state, func.count()).where(Trial.study_id == study_id)
            .group_by(Trial.state)):
        progress.counts[state] = count
    # the same rule as `hpsearch best`: pruned trials do not count
    best = conn.execute(best_query(study_id, Trial.number, Trial.value,
                                   objectives=_stored_objectives(study.config))).first()
    if best is not None:
        progress.best_number, progress.best_value = best
    progress.running = [
        RunningTrial(*row) for row in conn.execute(
            select(Trial.worker, Trial.number, Trial.epochs_run, Trial.value, Trial.precision,
                   Trial.device)
            .where(Trial.study_id == study_id, Trial.state == "running")
            .order_by(Trial.worker))]
    return progress


def stored_evaluations(conn: Connection, trial_id: int, epochs: int,
                       seeds: Sequence[int]) -> dict[int, StoredEvaluation]:
    """The trial's stored retrainings of `epochs` epochs with these seeds, by seed."""
    rows = conn.execute(select(
        Evaluation.seed, Evaluation.epochs, Evaluation.test_acc, Evaluation.test_loss,
        Evaluation.seconds, Evaluation.checkpoint_path).where(
        Evaluation.trial_id == trial_id, Evaluation.epochs == epochs,
        Evaluation.seed.in_(seeds)))
    return {row.seed: StoredEvaluation(*row) for row in rows}


def objective_values(conn: Connection, study: StudyInfo, *, eligible: bool = False
                     ) -> dict[int, tuple[float | None, ...]]:
    """Each trial's value of every objective, by trial number (one grouped query; the
    measures as hpsearch.objectives defines them); `eligible`: only the trials that may be
    best (`best_query`'s filter)."""
    epochs = [getattr(func, f)(getattr(Epoch, m)).label(f"{f}_{m}")
              for m in EPOCH_MEASURES for f in ("max", "min")]
    query = (select(Trial.number, Trial.n_params, func.avg(Epoch.seconds).label("spe"),
                    *epochs)
             .outerjoin(Epoch, Epoch.trial_id == Trial.id).where(Trial.study_id == study.id)
             .group_by(Trial.id, Trial.number, Trial.n_params))
    if eligible:
        query = query.where(*_eligible())
    out: dict[int, tuple[float | None, ...]] = {}
    for row in conn.execute(query):
        values: list[float | None] = []
        for spec in study.objectives:
            if spec.measure == "params":
                value = row.n_params
            elif spec.measure in EPOCH_MEASURES:
                value = getattr(row, f"{'max' if spec.maximize else 'min'}_{spec.measure}")
            else:
                value = row.spe
            # a parameter count stays a whole number
            values.append(value if value is None or spec.measure == "params" else float(value))
        out[row.number] = tuple(values)
    return out


def pareto(conn: Connection, study: StudyInfo) -> ParetoFront:
    """The study's Pareto front over its complete trials with every objective's value finite
    (for one objective: the trials tied for best)."""
    values = {n: v for n, v in objective_values(conn, study, eligible=True).items()
              if all(x is not None and math.isfinite(x) for x in v)}
    numbers = pareto_front(list(values.items()), study.objectives)
    first = study.objectives[0]
    numbers.sort(key=lambda n: (-values[n][0] if first.maximize else values[n][0], n))
    trials = {t.number: t for t in conn.execute(
        select(Trial.__table__).where(Trial.study_id == study.id,
                                      Trial.number.in_(numbers))).all()}
    best = best_trial(conn, study)
    return ParetoFront(study.objectives, [_trial_record(trials[n]) for n in numbers],
                       {n: values[n] for n in numbers},  # type: ignore[misc]
                       best.number if best else None, len(values))
