"""Warm starts: queue known configurations in a study so they run before the sampler's own.

A configuration comes from a `best --format toml` file or from the best trials of another study.
Each one is checked against the target study's stored search space before anything is queued:
a sampled parameter must lie inside its distribution, every other parameter must equal the
value this study fixes. `epochs` is skipped: the study's [budget] decides how long trials run.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, json_to_distribution
from optuna.exceptions import ExperimentalWarning

from hpsearch.db import queries, records
from hpsearch.db.engine import normalise_url
from hpsearch.db.migrate import current_revision, ensure_schema, reading
from hpsearch.errors import ConfigError, HpsearchError
from hpsearch.params import MODEL_ARGS, PARAM_NAMES, coerce, param_type
from hpsearch.search.run_file import load_run_config
from hpsearch.search.study import open_storage, prepare_study
from hpsearch.spec import StudyConfig, dimension_json

BUDGET_KEYS = ("epochs",)  # set by the target study's [budget], never taken from a candidate


@dataclass(frozen=True)
class Candidate:
    """One configuration to queue and where it came from (shown in its Optuna user attrs)."""

    params: dict[str, Any]
    source: str


def candidates_from_file(path: Path) -> list[Candidate]:
    """The [params] of a `best --format toml` (or `train --config`) file."""
    params, _data, _seeds = load_run_config(path)
    return [Candidate(params, f"file {path.name}")]


def candidates_from_study(url: str, name: str, top: int) -> list[Candidate]:
    """The `top` best complete trials of study `name` (the same order as `hpsearch best`)."""
    with reading(url) as conn:
        study = queries.find_study(conn, name)
        trials = queries.leaderboard(conn, study, top=top, states=("complete",))
    if not trials:
        raise HpsearchError(f"study {name!r} has no complete trial to start from")
    # the sampled values only: the other study's fixed values are its own choices, and the
    # target study fixes its own
    return [Candidate(t.sampled_params, f"study {name} trial {t.number}") for t in trials]


def fit_to_space(candidate: Candidate, config: StudyConfig) -> dict[str, Any]:
    """The candidate's values of the searched parameters; ConfigError naming every value that
    lies outside the space, contradicts a fixed value, or is given for a searched parameter
    that does not act under the candidate's other values (conditions). A value of an option
    that does not act in this study at all is passed over: it would change nothing."""
    outside: list[str] = []
    given: dict[str, Any] = {}
    for key, raw in candidate.params.items():
        if key in PARAM_NAMES:
            given[key] = coerce(key, raw, param_type(key))
        elif key.startswith(f"{MODEL_ARGS}.") and key in {*config.space, *config.fixed}:
            given[key] = raw  # a factory's argument: its distribution checks it below
        elif key not in BUDGET_KEYS:
            outside.append(f"{key} (unknown parameter)")
    acting = config.resolve(lambda name, _dim: given.get(name))
    chosen: dict[str, Any] = {}
    for key, value in given.items():
        if key in BUDGET_KEYS:
            continue
        if key in config.space:
            dist = json_to_distribution(json.dumps(dimension_json(config.space[key])))
            if key not in acting:
                needs = "; ".join(f"{parent} in {list(values)}" for parent, values
                                  in config.conditions.get(key, {}).items())
                outside.append(f"{key}={value!r} (does not act here: it needs {needs})")
            elif _contains(dist, value):
                chosen[key] = value
            else:
                outside.append(f"{key}={value!r} (searched: {_describe(dist)})")
        elif key in acting and acting[key] != value:
            outside.append(f"{key}={value!r} (fixed at {acting[key]!r})")
    if outside:
        raise ConfigError(f"{candidate.source}: outside this study's space: "
                          + "; ".join(outside))
    return chosen


def _contains(distribution: BaseDistribution, value: Any) -> bool:
    try:
        internal = distribution.to_internal_repr(value)
    except (ValueError, TypeError):  # a categorical value that is not one of the choices
        return False
    return distribution._contains(internal)  # Optuna's own membership test


def _describe(distribution: BaseDistribution) -> str:
    if isinstance(distribution, CategoricalDistribution):
        return "one of " + ", ".join(repr(c) for c in distribution.choices)
    low, high = distribution.low, distribution.high  # type: ignore[attr-defined]
    step = distribution.step  # type: ignore[attr-defined]
    log = " log" if distribution.log else ""  # type: ignore[attr-defined]
    return f"{low}..{high}{log}" + (f" step {step}" if step not in (None, 1) else "")


@dataclass(frozen=True)
class Queued:
    params: dict[str, Any]  # the values of the study's sampled parameters
    candidate: Candidate
    new: bool  # False: the study already held a trial with these values (queued or run)


def enqueue(url: str, study: str | StudyConfig, candidates: list[Candidate]) -> list[Queued]:
    """Check every candidate against the study (a name in the database, or a study file's
    config, created in the database only once every candidate fits), then queue them all.
    A set of values the study already holds, queued or run, is not queued twice."""
    url = normalise_url(url)
    # a study file names a new study; once the study is stored, its stored space and config
    # decide (as for every reader), whatever the file says now
    stored = _stored_study(url, study.name if isinstance(study, StudyConfig) else study)
    if stored is None and not isinstance(study, StudyConfig):
        with reading(url) as conn:  # a name the database does not hold: find_study says so
            queries.find_study(conn, str(study))
    config = stored.config if stored is not None else study
    for candidate in candidates:  # Optuna would queue {}: a trial that fixes nothing
        if not set(candidate.params) - set(BUDGET_KEYS):
            raise ConfigError(f"{candidate.source}: no parameter values to queue (a [params] "
                              "table of parameter = value)")
    queued = [fit_to_space(c, config) for c in candidates]
    if stored is None:
        prepare_study(config, url)
    storage = open_storage(url, config.workers)
    out = []
    try:
        loaded = optuna.load_study(study_name=config.name, storage=storage)
        with warnings.catch_warnings(action="ignore", category=ExperimentalWarning):
            for params, candidate in zip(queued, candidates, strict=True):
                before = storage.get_n_trials(loaded._study_id)
                loaded.enqueue_trial(params, user_attrs={"enqueued_from": candidate.source},
                                     skip_if_exists=True)
                new = storage.get_n_trials(loaded._study_id) > before
                out.append(Queued(params, candidate, new))
    finally:
        storage.remove_session()
    return out


def _stored_study(url: str, name: str) -> records.StudyInfo | None:
    """The stored study `name`; None when the database holds no study of that name (or no
    hpsearch tables yet). Creates no file and no table."""
    if current_revision(url) is None:
        return None
    ensure_schema(url)  # an older schema is upgraded, as for every writing command
    with reading(url) as conn:
        return queries.find_study(conn, name) if queries.has_study(conn, name) else None
