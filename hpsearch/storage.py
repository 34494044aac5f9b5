"""The Optuna study in the database: its storage, and creating or resuming it.

No torch here: `hpsearch run` creates the study before its workers start, and importing torch
would delay them by a second.
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Callable
from typing import Any

import optuna
from optuna.exceptions import StorageInternalError
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from sqlalchemy.exc import DBAPIError

from hpsearch.config import StudyConfig, WorkerOptions
from hpsearch.db.engine import engine_kwargs, make_engine, mask_url, normalise_url
from hpsearch.db.migrate import ensure_schema
from hpsearch.db.recorder import Recorder, one_line, transient_cause, with_retry
from hpsearch.errors import HpsearchError
from hpsearch.space import space_json

log = logging.getLogger(__name__)
METRIC_NAMES = ["val_acc"]  # what the objective returns: the trial's best validation accuracy


def _retrying(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(self: RDBStorage, *args: Any, **kwargs: Any) -> Any:
        return with_retry(lambda: method(self, *args, **kwargs),
                          f"Optuna storage: {method.__name__}")
    return call


class ResilientRDBStorage(RDBStorage):
    """Optuna's RDBStorage that waits out a database restart, as our Recorder does.

    Plain RDBStorage raises at the first lost connection: a worker between trials dies, a
    trial whose report() fails is failed, and Optuna's heartbeat thread ends for good, so the
    live trial is later failed as stale by another worker. Here every storage call that reaches
    the database retries transient errors for RETRY_FOR_S, and a heartbeat that cannot be
    written is skipped (the next one, heartbeat_interval later, tries again).
    """

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            super().record_heartbeat(trial_id)
        except (StorageInternalError, DBAPIError) as exc:
            cause = transient_cause(exc)
            if cause is None:
                raise
            log.warning("heartbeat of trial id %d not recorded (%s); the next one retries",
                        trial_id, one_line(cause))


# RDBStorage's methods that open a database session themselves (the others call these).
for _name in ("create_new_study", "get_study_id_from_name", "get_study_name_from_id",
              "get_study_directions", "get_study_user_attrs", "get_study_system_attrs",
              "set_study_user_attr", "set_study_system_attr", "get_all_studies",
              "_create_new_trial", "_set_trial_param", "get_trial_param",
              "set_trial_state_values", "set_trial_intermediate_value", "set_trial_user_attr",
              "set_trial_system_attr", "get_trial_user_attrs", "get_trial_system_attrs",
              "get_trial_id_from_study_id_trial_number", "get_trial", "_get_trials",
              "_get_best_trial_id", "_get_stale_trial_ids"):
    setattr(ResilientRDBStorage, _name, _retrying(getattr(RDBStorage, _name)))


def open_storage(url: str, workers: WorkerOptions) -> RDBStorage:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            return ResilientRDBStorage(
                url,
                engine_kwargs=engine_kwargs(url),
                heartbeat_interval=workers.heartbeat_interval,
                grace_period=workers.grace_period,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                    max_retry=workers.max_retry, inherit_intermediate_values=True),
            )
        except RuntimeError as exc:  # Optuna's tables written by a newer (or older) Optuna
            if "compatible with the table schema" not in str(exc):
                raise
            raise HpsearchError(f"database {mask_url(url)}: {' '.join(str(exc).split())}"
                                ) from None


def prepare_study(config: StudyConfig, url: str, n_trials: int | None = None) -> int:
    """Create (or resume) the Optuna study and our study row; returns the row id.

    Done once, before any worker starts: creating the schema from several processes at once
    races on a fresh SQLite file.
    """
    url = normalise_url(url)
    ensure_schema(url)
    recorder = Recorder(make_engine(url))
    # our rows of this name must still belong to Optuna's study of this name: checked before
    # create_study, which would otherwise make a new Optuna study for old rows
    recorder.study_row(config.name)
    storage = open_storage(url, config.workers)
    try:
        study = optuna.create_study(study_name=config.name, storage=storage,
                                    direction="maximize", load_if_exists=True)
        if study.metric_names != METRIC_NAMES:  # named once; optuna-dashboard shows it
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names(METRIC_NAMES)
    finally:
        storage.remove_session()
    return recorder.ensure_study(
        config.name, study._study_id, config.raw, space_json(config.space), config.data.dataset,
        n_trials if n_trials is not None else config.n_trials)


def publish_test_accuracy(url: str, optuna_study_id: int, number: int,
                          summary: dict[str, Any]) -> None:
    """Show a trial's final test accuracy (`hpsearch evaluate`) in optuna-dashboard and
    `optuna` tools. Optuna refuses attribute writes to a finished trial, so it goes on the
    study: user attribute `test_acc_final.trial_N` = {mean, std, seeds, epochs, trial}."""
    storage = open_storage(url, WorkerOptions())
    try:
        storage.set_study_user_attr(optuna_study_id, f"test_acc_final.trial_{number}", summary)
    finally:
        storage.remove_session()
        storage.engine.dispose()
