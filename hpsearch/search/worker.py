"""One worker's share of a study's trials (`hpsearch worker`, and each process of `hpsearch run`).

One database URL is the whole coordination story: any number of workers, on any machines, load
the same Optuna study. Heartbeats mark a dead worker's trial failed, and the retry callback queues
it again; the retry resumes from the dead trial's last epoch checkpoint.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from hpsearch.db.engine import make_engine, mask_url, normalise_url
from hpsearch.db.errors import DatabaseError
from hpsearch.db.migrate import ensure_schema
from hpsearch.db.recorder import Recorder
from hpsearch.db.trial_slot import TrialSlotLock
from hpsearch.errors import HpsearchError
from hpsearch.files import writable_folder
from hpsearch.paths import checkpoint_folder
from hpsearch.search.control import StudyControl
from hpsearch.search.dryrun import DryRunTrainer
from hpsearch.search.hours import SearchLimits, published_limits
from hpsearch.search.objective import COUNTED_STATES, Objective, TrialTrainer
from hpsearch.search.study import ResilientRDBStorage, open_storage
from hpsearch.spec import StudyConfig
from hpsearch.stop import interrupted_reason, stop_requested, take_over_stop

log = logging.getLogger(__name__)
# How often an idle worker (the study's last trials run elsewhere) looks again: soon at first,
# because at the end of a study the run waits for it, then less and less often (doubling up to
# WAIT_POLL_MAX_S), so that 64 idle workers do not poll the database 256 times a second.
WAIT_POLL_S = 0.25
WAIT_POLL_MAX_S = 5.0
MAX_CONSECUTIVE_FAILURES = 5  # a worker whose every trial fails stops instead of looping


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def load_config(recorder: Recorder, name: str, url: str) -> tuple[StudyConfig, int]:
    row = recorder.study_row(name)
    if row is None:
        raise HpsearchError(f"unknown study {name!r} in {mask_url(url)} "
                            "(start it with `hpsearch run STUDY.toml`)")
    # as stored, whichever Unicode form `name` was typed in
    return StudyConfig.from_stored(row.name, row.spec, row.settings), row.id


@dataclass
class WorkerSummary:
    complete: int = 0
    pruned: int = 0
    failed: int = 0


def make_trainer(config: StudyConfig, device: str, threads: int | None) -> TrialTrainer:
    """The trainer of this study's trials: a dry run's imports no torch (it is imported here,
    only by workers that train)."""
    if config.dry_run is not None:
        log.info("dry run: %.3g s per epoch, no training", config.dry_run)
        return DryRunTrainer(config.dry_run)
    from hpsearch.trainer.data import load_train_val
    from hpsearch.trainer.runtime import configure_threads
    from hpsearch.trainer.torch_trainer import TorchTrainer

    log.info("training with %d thread(s)", configure_threads(threads))
    return TorchTrainer(load_train_val(config.data, seed=config.seed), device)


def run_worker(name: str, url: str, *, worker_index: int = 0, device: str = "auto",
               timeout: float | None = None, threads: int | None = None) -> WorkerSummary:
    """Run trials of study `name` until it has n_trials finished trials, or until `timeout`
    seconds (default: the study's own `timeout`) have passed; a running trial finishes.
    `threads`: torch's CPU threads (default: every core this process may use)."""
    url = normalise_url(url)
    ensure_schema(url)
    # one connection pool for the whole worker (our writes, Optuna's storage, the trial-slot
    # lock): at most engine_kwargs' pool_size + max_overflow connections per worker
    engine = make_engine(url)
    recorder = Recorder(engine)
    config, row_id = load_config(recorder, name, url)
    name = config.name
    writable_folder(checkpoint_folder(config.workers.checkpoint_dir, name), "checkpoints")
    storage = open_storage(url, config.workers, pool=engine.pool)
    from hpsearch.search.space import make_pruner, make_sampler

    # trials already in the study shift the seed: a resumed study must not redraw the random
    # start-up points of its first run
    existing = storage.get_n_trials(storage.get_study_id_from_name(name))
    study = optuna.load_study(study_name=name, storage=storage,
                              sampler=make_sampler(config, worker_index, existing),
                              pruner=make_pruner(config))
    me = worker_name()
    # an hours budget's limits, published by the `hpsearch run` that plans it
    limits = SearchLimits(lambda: published_limits(storage, study._study_id))
    control = StudyControl(study, config)  # `hpsearch study stop|pause`, a reached target

    def after_epoch() -> bool:
        control.after_epoch()  # a central stop ends the trial here (StudyHalted)
        return limits.search_over()
    objective = Objective(config, row_id, make_trainer(config, device, threads), recorder, me,
                          search_over=after_epoch)
    summary = WorkerSummary()
    last: list[FrozenTrial] = []
    timeout = timeout if timeout is not None else config.timeout
    deadline = time.monotonic() + timeout if timeout else None
    consecutive_failures = 0
    # held from counting the trials until Optuna has created ours (then the objective's first
    # step releases it): no two workers can both take the last slot (see db/trial_slot.py)
    slot = TrialSlotLock(url, study._study_id, engine)
    # released as soon as the ask has created the trial, before the sampler runs; a queued
    # retry that the ask picks up instead is released by the objective's first step
    storage.on_trial_created = (threading.get_ident(), slot.release)
    watcher = StaleTrialWatcher(study, storage, recorder, row_id)
    watcher.start()
    idle_wait = WAIT_POLL_S

    def run_trial(trial: optuna.Trial) -> float:
        slot.release()  # a queued trial (a retry) is RUNNING now: the next count sees it
        return objective(trial)

    try:
        while deadline is None or time.monotonic() < deadline:
            if not limits.may_start():
                log.info("the search time of the hours budget is over: no new trial")
                break
            halt = control.before_trial()
            if halt is not None:
                log.info("%s", halt.line(name))
                break
            _record_checked(recorder, storage, row_id)
            slot.acquire()
            try:
                # Running before finished: another worker's trial may finish between the two
                # counts. Read in this order it is counted twice (harmless: wait, look again);
                # in the other order it was counted in neither, and a trial too many started.
                running = storage.get_n_trials(study._study_id, TrialState.RUNNING)
                waiting = storage.get_n_trials(study._study_id, TrialState.WAITING)
                finished = storage.get_n_trials(study._study_id, COUNTED_STATES)
                if finished >= config.n_trials:
                    break
                if not waiting and finished + running >= config.n_trials:
                    # the last trials run elsewhere; if their worker died, the heartbeat check
                    # fails them and queues a retry, which this loop then picks up
                    slot.release()
                    _fail_stale(study)
                    time.sleep(idle_wait)
                    idle_wait = min(WAIT_POLL_MAX_S, 2 * idle_wait)
                    continue
                idle_wait = WAIT_POLL_S
                last.clear()
                _optimize_one(study, run_trial, objective, last)
            finally:
                slot.release()  # also when Optuna failed before running the objective
            state = last[0].state if last else TrialState.FAIL
            if state == TrialState.COMPLETE:
                summary.complete += 1
            elif state == TrialState.PRUNED:
                summary.pruned += 1
            else:
                summary.failed += 1
                consecutive_failures += 1
                if consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
                    raise HpsearchError(
                        f"{consecutive_failures} trials in a row failed in this worker; see "
                        "`hpsearch trials NAME --state failed` for the reasons")
                continue
            consecutive_failures = 0
        _record_dead_trials(recorder, storage, row_id)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM/SIGHUP as hpsearch.stop.Stopped
        _settle_stopped_trial(exc, recorder, row_id, me, study, objective)
        raise
    except Exception as exc:
        # while a stop is under way, database calls give up after STOP_WAIT_S (db.session) and
        # Optuna's own bookkeeping then fails in its own way: that is the stop, not an error
        stop = take_over_stop()
        if stop is None:
            raise
        _settle_stopped_trial(stop, recorder, row_id, me, study, objective)
        raise stop from exc
    finally:
        slot.close()
        watcher.stop()
        storage.remove_session()
        engine.dispose()
    return summary


class StaleTrialWatcher(threading.Thread):
    """Fails other workers' dead trials (no heartbeat within the grace period) while this
    worker trains, so their retry is queued within the grace period rather than whenever a
    worker next starts a trial (Optuna only checks then). Every worker has one, but the
    storage lets only one check per study per interval through (claim_stale_check): the
    others' attempts cost one UPDATE each."""

    def __init__(self, study: optuna.Study, storage: ResilientRDBStorage, recorder: Recorder,
                 study_row_id: int) -> None:
        super().__init__(name="stale-trial-watcher", daemon=True)
        self.study, self.storage = study, storage
        self.recorder, self.study_row_id = recorder, study_row_id
        self.interval = storage.stale_check_interval
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.wait(self.interval):
            try:
                _fail_stale(self.study)
                _record_checked(self.recorder, self.storage, self.study_row_id)
            except Exception as exc:  # noqa: BLE001 - a missed check is retried next interval
                log.warning("stale-trial check failed: %s", exc)
            finally:
                self.storage.remove_session()

    def stop(self) -> None:
        self._stopped.set()
        if stop_requested() is None:  # a stop does not wait: the thread dies with the process
            self.join(timeout=5)


def _record_checked(recorder: Recorder, storage: ResilientRDBStorage,
                    study_row_id: int) -> None:
    """After a stale-trial check made by this process (ours or Optuna's before a trial), and
    only then, the trials it failed are failed in our table too."""
    if storage.take_checked():
        _record_dead_trials(recorder, storage, study_row_id)


def _record_dead_trials(recorder: Recorder, storage: RDBStorage, study_row_id: int) -> None:
    """Trials that Optuna failed for lack of heartbeats (their worker died) are failed in our
    table too, so no trial shows as running forever."""
    for row, optuna_trial_id in recorder.running_trials(study_row_id):
        if storage.get_trial(optuna_trial_id).state == TrialState.FAIL:
            recorder.mark_failed(row, "worker died: no heartbeat within the grace period")


def _settle_stopped_trial(stop: KeyboardInterrupt, recorder: Recorder, study_row_id: int,
                          me: str, study: optuna.Study, objective: Objective) -> None:
    """Mark this worker's running trial as stopped and queue it again. Each step on its own: a
    database that fails one must not cost the other, nor turn the stop (and its exit code) into
    a database error. During an outage both give up STOP_WAIT_S after the stop; the trial is
    then resumable all the same: it stays "running" until its heartbeat is older than the
    grace period, when the next run's heartbeat check fails it and queues its retry, which
    resumes from its last checkpoint. `stop.settled` says whether both steps were done."""
    settled = True
    try:
        recorder.mark_running_as(study_row_id, me, "failed", interrupted_reason(stop))
    except Exception as error:  # noqa: BLE001 - see the docstring
        settled = False
        log.warning("running trials not marked (%s)", error)
    if objective.interrupted is not None:
        try:
            settled = _requeue(study, objective.interrupted) and settled
        except Exception as error:  # noqa: BLE001 - see the docstring
            settled = False
            log.warning("stopped trial not queued again (%s)", error)
    if not settled:
        log.warning("stopped without reaching the database: the next run resumes the stopped "
                    "trial from its last checkpoint once its heartbeat is older than the grace "
                    "period")
    stop.settled = settled  # type: ignore[attr-defined]


def _requeue(study: optuna.Study, trial_id: int) -> bool:
    """Queue a copy of a trial stopped by Ctrl-C/SIGTERM/SIGHUP, as Optuna's retry callback does
    for a dead worker's trial, so the next worker (the same command run again) resumes it from
    its last checkpoint instead of losing its epochs. A stop is not the trial's fault, so the
    copy is queued whatever max_retry says. False when Optuna has not recorded the stop (the
    trial is still running there: the heartbeat check queues it later)."""
    frozen = study._storage.get_trial(trial_id)
    if frozen.state == TrialState.RUNNING:
        return False
    if frozen.state == TrialState.FAIL:  # Optuna recorded the stop; anything else: leave it
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            RetryHeartbeatStaleTrialCallback(inherit_intermediate_values=True)(study, frozen)
    return True


def _optimize_one(study: optuna.Study, run_trial: Callable[[optuna.Trial], float],
                  objective: Objective, last: list[FrozenTrial]) -> None:
    """One trial. A permanent database error stops the worker with its reason: Optuna catches
    every error of an objective and would go on, and its own bookkeeping after the trial,
    failing on the same broken database, can hide the reason behind an UnboundLocalError."""
    try:
        study.optimize(run_trial, n_trials=1, catch=(Exception,), gc_after_trial=False,
                       callbacks=[lambda _s, t: last.append(t)])
    except Exception as exc:
        if objective.fatal is not None:
            raise objective.fatal from exc
        raise
    if objective.fatal is not None:
        raise objective.fatal


def _database_errors_on_one_line(record: logging.LogRecord) -> bool:
    """Optuna logs a failed trial with its traceback; for a database error the one line that
    the worker ends with says everything."""
    if record.exc_info and isinstance(record.exc_info[1], DatabaseError):
        record.exc_info = record.exc_text = None  # the text too: it may be formatted already
    return True


# the logger of optuna.study._optimize, which reports failed trials
logging.getLogger("optuna.study._optimize").addFilter(_database_errors_on_one_line)


def _fail_stale(study: optuna.Study) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)

