"""The Optuna study in the database: its storage, and creating or resuming it.

No torch here: `hpsearch run` creates the study before its workers start, and importing torch
would delay them by a second.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState
from sqlalchemy.pool import Pool

from hpsearch.db.engine import make_engine, mask_url, normalise_url
from hpsearch.db.errors import DuplicateRowError, as_database_error
from hpsearch.db.migrate import ensure_schema, optuna_schema_lock
from hpsearch.db.optuna_tables import claim_stale_check
from hpsearch.db.recorder import Recorder
from hpsearch.db.session import (
    connection_scope,
    health,
    heartbeat_lock_wait,
    retrying,
    translating,
)
from hpsearch.errors import HpsearchError
from hpsearch.search.study_file import check_n_trials
from hpsearch.spec import StudyConfig, WorkerOptions

log = logging.getLogger(__name__)
# A write lock that took longer than this to get was held by someone (normally milliseconds,
# even with several workers writing epochs): heartbeats were held up too.
LOCK_WAIT_S = 0.25


def _retrying(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(self: ResilientRDBStorage, *args: Any, **kwargs: Any) -> Any:
        return retrying(lambda: method(self, *args, **kwargs),
                        f"Optuna storage: {method.__name__}", url=self.url)
    return call


class ResilientRDBStorage(RDBStorage):
    """Optuna's RDBStorage under our retry policy and error classification.

    Plain RDBStorage raises at the first lost connection: a worker between trials dies, a
    trial whose report() fails is failed, and Optuna's heartbeat thread ends for good. Here
    every storage call that reaches the database waits out transient errors and raises
    permanent ones at once as one-line DatabaseErrors (`hpsearch.db.session.retrying`); a
    heartbeat that cannot be written is skipped (the next one tries again).

    Stale-trial checks (Optuna's before each trial, and our StaleTrialWatcher's) never fail a
    trial this process is running, however old its heartbeat looks after an outage, and
    report nothing until this process's own database access has been steady for a grace
    period: the other workers' live trials need that long to beat again after an outage.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._own_lock = threading.Lock()
        self._own_trials: set[int] = set()
        # one stale-trial check per study per interval, across all workers (see
        # claim_stale_check): the check loads every running trial, and N workers each doing
        # it every interval made the statements per trial grow with N
        self.stale_check_interval = max(1.0, (self.grace_period or 0) / 4)
        self._checked = threading.Event()  # set when this process made a check
        # called once an ask of `study.ask()` has created its (running) trial, in the thread
        # that asked: the worker's trial-slot lock is released there, before the sampler runs
        # (TPE is the slow part of an ask, and under the lock every worker's ask would wait
        # for every other's). Not for copies queued by the retry callback (a template trial).
        self.on_trial_created: tuple[int, Callable[[], None]] | None = None

    def create_new_trial(self, study_id: int, template_trial: Any = None) -> int:
        trial_id = super().create_new_trial(study_id, template_trial)
        hook = self.on_trial_created
        if hook is not None and template_trial is None and hook[0] == threading.get_ident():
            hook[1]()
        return trial_id

    def record_heartbeat(self, trial_id: int) -> None:
        with self._own_lock:  # Optuna's heartbeat thread beats only for this process's trials
            self._own_trials.add(trial_id)
        started = time.monotonic()
        try:
            super().record_heartbeat(trial_id)
        except Exception as exc:
            error = as_database_error(exc, self.url)
            if error is None:
                raise
            health.disturbed()
            # logged, never raised: an exception would end Optuna's heartbeat thread for good
            log.warning("heartbeat of trial id %d not recorded (%s); the next one retries",
                        trial_id, error.reason)
            return
        health.observe(started)

    def set_trial_state_values(self, trial_id: int, state: TrialState,
                               values: Any = None) -> bool:
        done = retrying(lambda: RDBStorage.set_trial_state_values(self, trial_id, state, values),
                        "Optuna storage: set_trial_state_values", url=self.url)
        if state.is_finished():
            with self._own_lock:
                self._own_trials.discard(trial_id)
        return done

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        grace = self.grace_period or 2 * (self.heartbeat_interval or 0)
        if not self._claim_stale_check(study_id):
            return []  # another worker checked the study less than an interval ago
        self._probe_write_lock()
        if health.steady_for() < grace:
            return []
        self._checked.set()
        stale = retrying(lambda: RDBStorage._get_stale_trial_ids(self, study_id),
                         "Optuna storage: _get_stale_trial_ids", url=self.url)
        with self._own_lock:
            return [trial_id for trial_id in stale if trial_id not in self._own_trials]


    def _claim_stale_check(self, study_id: int) -> bool:
        def claim() -> bool:
            with connection_scope(self.engine) as conn:
                return claim_stale_check(conn, study_id, time.time(), self.stale_check_interval)
        try:
            return retrying(claim, "Optuna storage: claiming the stale-trial check", url=self.url)
        except DuplicateRowError:  # another worker made the study's first check just now
            return False

    def take_checked(self) -> bool:
        """Whether this process checked for stale trials since the last call."""
        checked = self._checked.is_set()
        self._checked.clear()
        return checked

    def _probe_write_lock(self) -> None:
        """Take, and give back at once, the lock a heartbeat write needs; a wait for it counts
        as a disturbance.

        A lock held by another client (SQLite's write lock, a PostgreSQL table lock) blocks
        heartbeat writes but not reads: without this, a worker whose own calls are all reads
        would see every live trial as stale the moment the lock is released, before their
        heartbeat threads beat again.
        """
        try:
            waited = heartbeat_lock_wait(self.engine)
        except Exception as exc:
            if as_database_error(exc, self.url) is None:
                raise
            health.disturbed()  # cannot even tell: as good as an outage
            return
        if waited > LOCK_WAIT_S:
            health.disturbed()


# RDBStorage's other methods that open a database session themselves (the rest call these).
for _name in ("create_new_study", "get_study_id_from_name", "get_study_name_from_id",
              "get_study_directions", "get_study_user_attrs", "get_study_system_attrs",
              "set_study_user_attr", "set_study_system_attr", "get_all_studies",
              "_create_new_trial", "_set_trial_param", "get_trial_param",
              "set_trial_intermediate_value", "set_trial_user_attr",
              "set_trial_system_attr", "get_trial_user_attrs", "get_trial_system_attrs",
              "get_trial_id_from_study_id_trial_number", "get_trial", "_get_trials",
              "_get_best_trial_id"):
    setattr(ResilientRDBStorage, _name, _retrying(getattr(RDBStorage, _name)))


def open_storage(url: str, workers: WorkerOptions,
                 pool: Pool | None = None) -> ResilientRDBStorage:
    """Optuna's storage for `url`. Its constructor creates Optuna's tables when missing; under
    a database-wide lock, so that processes starting together on a new database do not race
    (`optuna_schema_lock`). `pool`: an engine's connection pool to share
    (a worker's one pool), instead of a new one."""
    # our pool, also where none is given: every connection gets our settings (reply_deadline)
    kwargs = {"pool": pool if pool is not None else make_engine(url).pool}
    def construct() -> RDBStorage:
        with warnings.catch_warnings(), optuna_schema_lock(url):
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return ResilientRDBStorage(
                url,
                engine_kwargs=kwargs,
                heartbeat_interval=workers.heartbeat_interval,
                grace_period=workers.grace_period,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                    max_retry=workers.max_retry, inherit_intermediate_values=True),
            )
    # a failure here is at start-up: reported at once (no waiting), like every other start-up
    with translating(url):
        try:
            return construct()
        except RuntimeError as exc:  # Optuna's tables written by a newer (or older) Optuna
            if "compatible with the table schema" not in str(exc):
                raise
            raise HpsearchError(f"database {mask_url(url)}: {' '.join(str(exc).split())}"
                                ) from None


def prepare_study(config: StudyConfig, url: str, n_trials: int | None = None) -> int:
    """Create (or resume) the Optuna study and our study row; returns the row id. Done once,
    before any worker starts. `n_trials` overrides the config's; checked before anything is
    written (a study half made in Optuna's tables otherwise)."""
    if n_trials is not None:
        n_trials = check_n_trials(n_trials)
    url = normalise_url(url)
    ensure_schema(url)
    recorder = Recorder(make_engine(url))
    # our rows of this name must still belong to Optuna's study of this name: checked before
    # create_study, which would otherwise make a new Optuna study for old rows
    recorder.study_row(config.name)
    storage = open_storage(url, config.workers)
    try:
        # a changed objective never reaches here: config_changes refuses it for an old study
        study = optuna.create_study(
            study_name=config.name, storage=storage, load_if_exists=True,
            directions=["maximize" if o.maximize else "minimize" for o in config.objectives])
        names = [o.measure for o in config.objectives]  # what the objective returns, in order
        if study.metric_names != names:  # named once; optuna-dashboard shows them
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names(names)
    finally:
        storage.remove_session()
    settings = config.settings_json()
    if n_trials is not None:
        settings["n_trials"] = n_trials
    return recorder.ensure_study(config.name, study._study_id, config.spec_json(), settings,
                                 config.data.dataset)


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
