"""Bounds of the counts that start processes, threads or retrainings, and the checks that the
CLI's options and the Python API share (hpsearch.cli, hpsearch.api): past these, a typo, not a
plan. No torch here."""

from __future__ import annotations

from hpsearch.errors import ConfigError
from hpsearch.params import INT_MAX

MAX_WORKERS = 256
MAX_THREADS = 1024
MAX_SEEDS = 1000  # each seed is one full retraining
MAX_ENSEMBLE = 100  # members are retrained once per seed each
# how long a study runs: n_trials and timeout (in the study file, run's options, the API)
MIN_TRIALS, MIN_TIMEOUT_S = 1, 1


def check_count(what: str, value: object, low: int, high: int = INT_MAX) -> int:
    """`value` as a whole number from `low` to `high`; ConfigError naming `what` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{what} must be a whole number, got {value!r}")
    if not low <= value <= high:
        raise ConfigError(f"{what} must be between {low} and {high}, got {value}")
    return value


def check_threads(threads: object) -> int | None:
    """CPU threads: None (every available core) or 1..MAX_THREADS."""
    return None if threads is None else check_count("threads", threads, 1, MAX_THREADS)


def check_epochs(value: object) -> int | str | None:
    """A retraining's epochs: None (the trial's own), "auto", or 1..INT_MAX (text as typed is
    read as a number)."""
    if value is None or value == "auto":
        return value  # type: ignore[return-value]
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            raise ConfigError(f"epochs must be a number or 'auto', got {value!r}") from None
    return check_count("epochs", value, 1)
