"""The Optuna study in the database: its storage, and creating or resuming it.

No torch here: `hpsearch run` creates the study before its workers start, and importing torch
would delay them by a second.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import Engine
from sqlalchemy.pool import Pool

from hpsearch.db.engine import make_engine, mask_url, normalise_url
from hpsearch.db.errors import as_database_error
from hpsearch.db.migrate import ensure_schema, optuna_schema_lock
from hpsearch.db.optuna_tables import (
    claim_stale_check,
    record_heartbeat,
    set_study_attr,
    stale_trial_ids,
)
from hpsearch.db.recorder import Recorder
from hpsearch.db.session import connection_scope, translating
from hpsearch.errors import HpsearchError
from hpsearch.masking import one_line
from hpsearch.search.study_file import check_n_trials
from hpsearch.spec import StudyConfig, WorkerOptions

log = logging.getLogger(__name__)
# the reason stored for a trial that Optuna's heartbeat check failed
NO_HEARTBEAT = ("no heartbeat within the grace period: its worker died, or was frozen or cut "
                "off from the database")


class Storage(RDBStorage):
    """Optuna's RDBStorage with these differences, none about outages (a database error inside
    a trial ends the trial, which is resumed from its checkpoint; see hpsearch.search.worker):

    - a heartbeat is one statement (Optuna's takes four), and one that cannot be written is
      logged and skipped, not raised: an exception would end Optuna's heartbeat thread, with
      a traceback, for the rest of the trial;
    - one stale-trial check per study per interval, across all workers (claim_stale_check):
      the check loads every running trial, and N workers each doing it before every trial
      made the statements per trial grow with N; a worker tries at most once per interval,
      and the check is one statement (Optuna's takes three);
    - `on_trial_created`: called once an ask of `study.ask()` has created its (running) trial,
      in the thread that asked: the worker's trial-slot lock is released there, before the
      sampler runs (TPE is the slow part of an ask, and under the lock every worker's ask
      would wait for every other's). Not for copies queued by the retry callback;
    - `ended_here`: the state a thread's last tell ended a trial with, so the worker knows how
      its trial ended without reading it back.
    """

    def __init__(self, url: str, *, max_retry: int | None, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.heartbeat_stale_trial_callback = RetryStaleTrial(Recorder(self.engine), max_retry)
        self.stale_check_interval = max(1.0, (self.grace_period or 0) / 4)
        self.next_stale_check = 0.0  # time.time() from which this process may try again
        self.on_trial_created: tuple[int, Callable[[], None]] | None = None
        self._ended = threading.local()  # .trial: (trial id, state) this thread last ended

    def set_trial_state_values(self, trial_id: int, state: TrialState,
                               values: Sequence[float] | None = None) -> bool:
        written = super().set_trial_state_values(trial_id, state, values)
        if written and state.is_finished():
            self._ended.trial = (trial_id, state)
        return written

    def ended_here(self, trial_id: int) -> TrialState | None:
        """The state this thread last ended trial `trial_id` with; None if it did not."""
        ended = getattr(self._ended, "trial", None)
        return ended[1] if ended is not None and ended[0] == trial_id else None

    def create_new_trial(self, study_id: int, template_trial: Any = None) -> int:
        trial_id = super().create_new_trial(study_id, template_trial)
        hook = self.on_trial_created
        if hook is not None and template_trial is None and hook[0] == threading.get_ident():
            hook[1]()
        return trial_id

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            with connection_scope(self.engine) as conn:
                record_heartbeat(conn, trial_id)
        except Exception as exc:
            error = as_database_error(exc, self.url)
            if error is None:
                raise
            log.warning("heartbeat of trial id %d not recorded (%s)", trial_id, error.reason)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        # this process's own tries too, once per interval: Optuna's at each trial's start and
        # the watcher's (StaleTrialWatcher) would otherwise both cost a statement
        now = time.time()
        if now < self.next_stale_check:
            return []
        self.next_stale_check = now + self.stale_check_interval
        with connection_scope(self.engine) as conn:
            if not claim_stale_check(conn, study_id, now, self.stale_check_interval):
                return []
            # Optuna's default grace period, where none is set
            grace = self.grace_period or 2 * (self.heartbeat_interval or 0)
            return stale_trial_ids(conn, study_id, grace)


def retry_callback(max_retry: int | None = None) -> RetryHeartbeatStaleTrialCallback:
    """Optuna's retry callback: it queues a copy of a failed trial that keeps its values."""
    with warnings.catch_warnings(action="ignore", category=ExperimentalWarning):
        return RetryHeartbeatStaleTrialCallback(max_retry=max_retry,
                                                inherit_intermediate_values=True)


class RetryStaleTrial:
    """The heartbeat check's callback for a trial it failed: our row of it is failed too, then
    Optuna's retry callback queues a copy that resumes from its checkpoint."""

    def __init__(self, recorder: Recorder, max_retry: int | None) -> None:
        self.recorder, self.retry = recorder, retry_callback(max_retry)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.recorder.mark_dead(trial._trial_id, NO_HEARTBEAT)
        self.retry(study, trial)


def open_storage(url: str, workers: WorkerOptions, pool: Pool | None = None) -> Storage:
    """Optuna's storage for `url`. Its constructor creates Optuna's tables when missing; under
    a database-wide lock, so that processes starting together on a new database do not race
    (`optuna_schema_lock`). `pool`: an engine's connection pool to share
    (a worker's one pool), instead of a new one."""
    # our pool, also where none is given: every connection gets our settings (db/engine.py)
    kwargs = {"pool": pool if pool is not None else make_engine(url).pool}
    # a failure here is at start-up: reported at once (no waiting), like every other start-up
    with (translating(url),
          warnings.catch_warnings(action="ignore", category=ExperimentalWarning),
          optuna_schema_lock(url)):
        try:
            return Storage(url, engine_kwargs=kwargs,
                           heartbeat_interval=workers.heartbeat_interval,
                           grace_period=workers.grace_period,
                           max_retry=workers.max_retry)
        except RuntimeError as exc:  # Optuna's tables written by a newer (or older) Optuna
            if "compatible with the table schema" not in str(exc):
                raise
            raise HpsearchError(f"database {mask_url(url)}: {one_line(exc)}"
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
            with warnings.catch_warnings(action="ignore", category=ExperimentalWarning):
                study.set_metric_names(names)
    finally:
        storage.remove_session()
    settings = config.settings_json()
    if n_trials is not None:
        settings["n_trials"] = n_trials
    return recorder.ensure_study(config.name, study._study_id, config.spec_json(), settings,
                                 config.data.dataset)


def publish_test_accuracy(engine: Engine, optuna_study_id: int, number: int,
                          summary: dict[str, Any]) -> None:
    """Show a trial's final test accuracy (`hpsearch evaluate`) in optuna-dashboard and
    `optuna` tools. Optuna refuses attribute writes to a finished trial, so it goes on the
    study: user attribute `test_acc_final.trial_N` = {mean, std, seeds, epochs, trial}."""
    with connection_scope(engine) as conn:
        set_study_attr(conn, optuna_study_id, f"test_acc_final.trial_{number}", summary)
