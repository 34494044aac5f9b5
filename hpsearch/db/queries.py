"""Reads of one study's trials and epochs, finding the study first, and the one definition of
"best" (`best_query`). Summaries of whole studies: summary_queries.py; the figures' inputs:
figure_queries.py; test-set results: evaluation_queries.py.

SQLAlchemy 2.x `select()` with bound parameters only. Aggregates (counts, best values, quantiles)
are computed in SQL so that `best` and `trials --top` stay fast on studies with 10,000 trials:
nothing here loads a whole study into Python unless the caller asks for every row.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Row, Select, String, cast, func, select
from sqlalchemy.sql.elements import ColumnElement

from hpsearch.db import optuna_tables
from hpsearch.db.engine import mask_url
from hpsearch.db.models import EPOCH_METRICS, TRIAL_STATES, Epoch, Study, Trial, study_named
from hpsearch.db.optuna_link import check_link, renamed_from
from hpsearch.db.records import EpochRecord, ParetoFront, StudyInfo, TrialRecord
from hpsearch.errors import ConfigError, HpsearchError
from hpsearch.objectives import DEFAULT, EPOCH_MEASURES, ObjectiveSpec, pareto_front
from hpsearch.params import PARAM_NAMES, param_type
from hpsearch.spec import StudyConfig

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
KNOWN_NAMES_SHOWN = 10  # an unknown-study error lists at most this many real names


def utc(value: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes; everything we store is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def has_study(conn: Connection, name: str) -> bool:
    return conn.scalar(select(Study.id).where(study_named(name))) is not None


def find_study(conn: Connection, name: str) -> StudyInfo:
    """The study called `name`, or a one-line error that lists the studies that do exist, or
    says what happened to the Optuna study behind it."""
    study = conn.execute(select(Study.__table__).where(study_named(name))).first()
    if study is None:
        renamed = renamed_from(conn, optuna_tables.optuna_studies(conn), name)
        if renamed is not None:
            raise HpsearchError(f"study {name!r} is hpsearch's study {renamed!r}, renamed in "
                                f"Optuna; run `hpsearch study rename {renamed!r} {name!r}` "
                                "to follow it")
        known = list(conn.scalars(select(Study.name).order_by(Study.name)
                                  .limit(KNOWN_NAMES_SHOWN + 1)))
        if not known:
            hint = "the database holds no studies yet"
        else:
            more = ", ..." if len(known) > KNOWN_NAMES_SHOWN else ""
            hint = "known: " + ", ".join(repr(n) for n in known[:KNOWN_NAMES_SHOWN]) + more
        raise HpsearchError(f"unknown study {name!r} in {mask_url(str(conn.engine.url))} "
                            f"({hint})")
    check_link(conn, study)
    note = dashboard_notes(conn, study.optuna_study_id).get(None, study.note)
    return StudyInfo(study.id, study.name, study.optuna_study_id, study.dataset,
                     StudyConfig.from_stored(study.name, study.spec, study.settings),
                     utc(study.created_at), note or None)


def dashboard_notes(conn: Connection, optuna_study_id: int) -> dict[int | None, str]:
    """The notes of a study (None) and of its trials (by Optuna trial id) where
    optuna-dashboard keeps them, hpsearch's too; a note stored before that lives in our
    row's note column, which shows while the dashboard has none."""
    return {trial: body for (_, trial), body in
            optuna_tables.dashboard_notes(conn, [optuna_study_id]).items()}


def finished_trials(conn: Connection, name: str) -> tuple[int, int] | None:
    """(the trials of study `name` finished as its workers count them: complete or pruned,
    the trial target its stored settings set), or None when there is no such study. From our
    rows, without Optuna: `run` and `worker` find out this way that there is nothing to do."""
    study = conn.execute(select(Study.__table__).where(study_named(name))).first()
    if study is None:
        return None
    check_link(conn, study)
    done = conn.scalar(select(func.count(Trial.id)).where(
        Trial.study_id == study.id, Trial.state.in_(("complete", "pruned"))))
    return int(done or 0), int((study.settings or {})["n_trials"])


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

    `study_id` may be a column (a correlated subquery, as `summary_queries.list_studies` uses it).
    """
    return ranked_query(study_id, *columns, objectives=objectives).limit(1)


def ranked_query(study_id: Any, *columns: Any,
                 objectives: tuple[ObjectiveSpec, ...] = DEFAULT) -> Select[Any]:
    """`best_query` without its LIMIT: the trials that may be best, best first. The top K of
    it are the study's K best trials (`evaluate --ensemble K`)."""
    first, *rest = objectives
    order = [in_best_order(Trial.value, first)]
    order += [in_best_order(_measure_column(spec), spec) for spec in rest]
    return (select(*columns).where(Trial.study_id == study_id, *eligible_for_best())
            .order_by(*order, Trial.number))


def in_best_order(column: Any, spec: ObjectiveSpec) -> ColumnElement[Any]:
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


def eligible_for_best() -> tuple[ColumnElement[bool], ...]:
    """`best_query`'s filter: the trials that may be best (NULL fails both comparisons)."""
    return (Trial.state.in_(BEST_STATES), Trial.value > float("-inf"),
            Trial.value < float("inf"))


def counts_for_best(state: str, value: float | None) -> bool:
    """`eligible_for_best` for one trial already in memory (best-so-far curves)."""
    return state in BEST_STATES and value is not None and math.isfinite(value)


def _trial_record(trial: Row[Any], notes: dict[int | None, str]) -> TrialRecord:
    """The trial's record; `notes`: the study's `dashboard_notes`."""
    return TrialRecord(
        id=trial.id, number=trial.number, state=trial.state, value=trial.value,
        best_epoch=trial.best_epoch, epochs_run=trial.epochs_run, n_params=trial.n_params,
        seconds=trial.seconds, started_at=utc(trial.started_at),
        finished_at=utc(trial.finished_at), worker=trial.worker, reason=trial.reason,
        retried_from=trial.retried_from, optuna_trial_id=trial.optuna_trial_id, seed=trial.seed,
        params=dict(trial.params or {}), sampled=tuple(trial.sampled or ()),
        tags=tuple(trial.tags or ()),
        note=notes.get(trial.optuna_trial_id, trial.note) or None, precision=trial.precision,
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
                states: Sequence[str] = (), sort: str = "value",
                tags: Sequence[str] = ()) -> list[TrialRecord]:
    """Trials ordered by `sort` (best value first by default), limited in SQL to `top`;
    `states`: only these; `tags`: only the trials carrying every one of them."""
    bad = sorted(set(states) - set(TRIAL_STATES))
    if bad:
        raise ConfigError(f"unknown state {bad[0]!r} (choose from: {', '.join(TRIAL_STATES)})")
    query = select(Trial.__table__).where(Trial.study_id == study.id)
    if states:
        query = query.where(Trial.state.in_(list(states)))
    for tag in tags:  # the tag as the JSON list holds it, quoted: a whole tag, not a part
        query = query.where(cast(Trial.tags, String).contains(json.dumps(tag), autoescape=True))
    query = query.order_by(_sort_key(sort, study), Trial.number).limit(top)
    notes = dashboard_notes(conn, study.optuna_study_id)
    return [_trial_record(t, notes) for t in conn.execute(query)]


def best_trial(conn: Connection, study: StudyInfo) -> TrialRecord | None:
    """The study's best trial by `best_query`'s rule, or None before any trial completes."""
    return next(iter(top_trials(conn, study, 1)), None)


def top_trials(conn: Connection, study: StudyInfo, k: int) -> list[TrialRecord]:
    """The study's `k` best trials by `best_query`'s rule, best first (fewer if fewer count)."""
    notes = dashboard_notes(conn, study.optuna_study_id)
    return [_trial_record(t, notes) for t in conn.execute(ranked_query(
        study.id, Trial.__table__, objectives=study.objectives).limit(k))]


def chosen_trial(conn: Connection, study: StudyInfo, number: int | None,
                 what: str) -> TrialRecord:
    """Trial `number` of the study, or (None) its best one; `what` names the use in the error
    while no trial has completed ("to evaluate")."""
    if number is not None:
        return get_trial(conn, study, number)
    record = best_trial(conn, study)
    if record is None:
        raise HpsearchError(f"study {study.name!r} has no complete trial {what} yet")
    return record


def get_trial(conn: Connection, study: StudyInfo, number: int) -> TrialRecord:
    trial = conn.execute(select(Trial.__table__).where(Trial.study_id == study.id,
                                                       Trial.number == number)).first()
    if trial is None:
        low, high = conn.execute(select(func.min(Trial.number), func.max(Trial.number))
                                 .where(Trial.study_id == study.id)).one()
        have = f"trials {low}..{high}" if low is not None else "no trials yet"
        raise HpsearchError(f"study {study.name!r} has no trial {number} ({have})")
    return _trial_record(trial, dashboard_notes(conn, study.optuna_study_id))


def iter_trials(conn: Connection, study: StudyInfo) -> Iterator[TrialRecord]:
    """Every trial of the study in trial-number order, streamed."""
    query = (select(Trial.__table__).where(Trial.study_id == study.id).order_by(Trial.number)
             .execution_options(yield_per=2000))
    notes = dashboard_notes(conn, study.optuna_study_id)
    for trial in conn.execute(query):
        yield _trial_record(trial, notes)


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


def trial_lrs(conn: Connection, study: StudyInfo, number: int) -> list[float]:
    """The learning rate each epoch of a trial started with (hps_epoch.lr), epoch by epoch: what
    its final retraining replays."""
    return list(conn.scalars(select(Epoch.lr).join(Trial, Trial.id == Epoch.trial_id).where(
        Trial.study_id == study.id, Trial.number == number).order_by(Epoch.epoch)))


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
        query = query.where(*eligible_for_best())
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
    notes = dashboard_notes(conn, study.optuna_study_id)
    return ParetoFront(study.objectives, [_trial_record(trials[n], notes) for n in numbers],
                       {n: values[n] for n in numbers},  # type: ignore[misc]
                       best.number if best else None, len(values))
