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

from hpsearch.db import queries, records
from hpsearch.db.engine import normalise_url
from hpsearch.db.migrate import current_revision, ensure_schema, reading
from hpsearch.errors import ConfigError, HpsearchError
from hpsearch.params import PARAM_NAMES, TrialParams, coerce, param_type
from hpsearch.search.run_file import load_run_config
from hpsearch.search.space import space_json
from hpsearch.search.study import open_storage, prepare_study
from hpsearch.search.study_file import StudyConfig, parse_study

BUDGET_KEYS = ("epochs",)  # set by the target study's [budget], never taken from a candidate


@dataclass(frozen=True)
class Candidate:
    """One configuration to queue and where it came from (shown in its Optuna user attrs)."""

    params: dict[str, Any]
    source: str


def candidates_from_file(path: Path) -> list[Candidate]:
    """The [params] of a `best --format toml` (or `train --config`) file."""
    params, _data, _seeds = load_run_config(path)
    if not params:
        raise ConfigError(f"{path}: no [params] table to queue")
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


def fit_to_space(candidate: Candidate, space: dict[str, BaseDistribution],
                 fixed: TrialParams) -> dict[str, Any]:
    """The candidate's values of the sampled parameters; ConfigError naming every value that
    lies outside the space or contradicts a fixed value."""
    outside: list[str] = []
    chosen: dict[str, Any] = {}
    for key, raw in candidate.params.items():
        if key in BUDGET_KEYS:
            continue
        if key not in PARAM_NAMES:
            outside.append(f"{key} (unknown parameter)")
            continue
        value = coerce(key, raw, param_type(key))
        if key in space:
            if _contains(space[key], value):
                chosen[key] = value
            else:
                outside.append(f"{key}={value!r} (searched: {_describe(space[key])})")
        elif getattr(fixed, key) != value:
            outside.append(f"{key}={value!r} (fixed at {getattr(fixed, key)!r})")
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
    if stored is None and isinstance(study, StudyConfig):
        config = study
        queued = _fit_all(candidates, space_json(config.space), config.base_params())
        prepare_study(config, url)
    else:
        if stored is None:  # a name the database does not hold: find_study says so
            with reading(url) as conn:
                stored = queries.find_study(conn, str(study))
        config = parse_study(stored.config, f"study {stored.name!r}")
        queued = _fit_all(candidates, stored.space, config.base_params())
    storage = open_storage(url, config.workers)
    out = []
    try:
        loaded = optuna.load_study(study_name=config.name, storage=storage)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
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


def _fit_all(candidates: list[Candidate], space: dict[str, Any],
             fixed: TrialParams) -> list[dict[str, Any]]:
    distributions = {key: json_to_distribution(json.dumps(dist)) for key, dist in space.items()}
    return [fit_to_space(c, distributions, fixed) for c in candidates]
