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
from typing import Any, TypeVar

import optuna
import tenacity
from optuna.exceptions import ExperimentalWarning
from optuna.trial import TrialState

from hpsearch.db.engine import make_engine, mask_url, normalise_url
from hpsearch.db.errors import DatabaseError, as_database_error
from hpsearch.db.migrate import ensure_schema
from hpsearch.db.optuna_link import BrokenLink
from hpsearch.db.optuna_tables import trial_state
from hpsearch.db.recorder import Recorder
from hpsearch.db.session import connection_scope
from hpsearch.db.trial_slot import TrialSlotLock
from hpsearch.errors import HpsearchError, TrialInterrupted, TrialLost
from hpsearch.files import writable_folder
from hpsearch.masking import one_line
from hpsearch.paths import checkpoint_folder
from hpsearch.search.control import StudyControl
from hpsearch.search.dryrun import DryRunTrainer
from hpsearch.search.hours import SearchLimits
from hpsearch.search.objective import COUNTED_STATES, Objective, TrialFailed, TrialTrainer
from hpsearch.search.study import Storage, open_storage, retry_callback
from hpsearch.spec import StudyConfig
from hpsearch.stop import check_stop, interrupted_reason, stop_requested
from hpsearch.stop import wait as stop_wait

log = logging.getLogger(__name__)
T = TypeVar("T")
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
    ensure_schema(url, create=False)  # the study must exist: `hpsearch run` makes it
    engine = make_engine(url)  # one pool: our writes, Optuna's storage, the trial-slot lock
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
    # an hours budget's limits, published by the `hpsearch run` that plans it
    limits = SearchLimits()
    # `hpsearch study stop|pause`, a target; its reads bring the limits too
    control = StudyControl(study, config, engine, limits)

    def after_epoch(study_attrs: dict[str, Any]) -> bool:
        control.after_epoch(study_attrs)  # a central stop ends the trial here (StudyHalted)
        return limits.search_over()
    objective = Objective(config, row_id, make_trainer(config, device, threads), recorder,
                          worker_name(), search_over=after_epoch)
    # held from counting the trials until Optuna has created ours (then the objective's first
    # step releases it): no two workers can both take the last slot (see db/trial_slot.py)
    grace = config.workers.grace_period  # a holder silent that long is frozen or dead
    slot = TrialSlotLock(url, study._study_id, engine, wait_s=grace)
    # released as soon as the ask has created the trial, before the sampler runs; a queued
    # retry that the ask picks up instead is released by the objective's first step
    storage.on_trial_created = (threading.get_ident(), slot.release)
    # the heartbeat check fails a dead trial and queues its retry under the same lock, so that
    # no count falls between the two and starts a new trial in the retry's place
    watcher = StaleTrialWatcher(study, storage, TrialSlotLock(url, study._study_id, engine,
                                                                wait_s=grace))
    watcher.start()
    trials = _Trials(study, storage, config, objective, slot, limits, control)
    try:
        return trials.run(url, timeout if timeout is not None else config.timeout)
    except KeyboardInterrupt:  # a stop (hpsearch.stop): checked between batches and trials
        trials.settle_faulted(url)
        raise
    finally:
        slot.close()
        watcher.stop()
        storage.remove_session()
        engine.dispose()


class _Trials:
    """The worker's loop: one trial after another, the database waited for between them."""

    def __init__(self, study: optuna.Study, storage: Storage, config: StudyConfig,
                 objective: Objective, slot: TrialSlotLock, limits: SearchLimits,
                 control: StudyControl) -> None:
        self.study, self.storage, self.config = study, storage, config
        self.objective, self.slot = objective, slot
        self.limits, self.control = limits, control
        self.summary = WorkerSummary()
        # Optuna ids of trials a fault ended, to fail (True: and queue again), then to queue
        # again; what the database did not take is done at the next try (see settle_faulted)
        self.to_fail: dict[int, tuple[bool, str]] = {}  # id: (queue again?, reason)
        self.to_copy: dict[int, tuple[bool, str]] = {}
        self.retry = retry_callback()

    def run(self, url: str, timeout: float | None) -> WorkerSummary:
        deadline = time.monotonic() + timeout if timeout else None
        consecutive_failures = 0
        idle_wait = WAIT_POLL_S
        while deadline is None or time.monotonic() < deadline:
            check_stop()
            try:
                state = until_the_database_answers(self._next, url)
            except Exception as exc:
                error = as_database_error(exc, url)
                if error is None:
                    gone = self._study_gone()
                    if gone is not None:  # Optuna said "Record does not exist", or worse
                        raise gone from exc
                    raise
                self.settle_faulted(url)  # the trial failed in Optuna too, where it still can be
                raise error from exc  # permanent: the worker ends with its reason
            if state == "done":
                break
            if state == "idle":
                # the last trials run elsewhere; if their worker died, the heartbeat check
                # fails them and queues a retry, which this loop then picks up
                stop_wait(idle_wait)
                idle_wait = min(WAIT_POLL_MAX_S, 2 * idle_wait)
                continue
            idle_wait = WAIT_POLL_S
            if state in (TrialState.COMPLETE, TrialState.PRUNED):
                consecutive_failures = 0
                continue
            consecutive_failures += state == TrialState.FAIL
            if consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
                raise HpsearchError(
                    f"{consecutive_failures} trials in a row failed in this worker; see "
                    "`hpsearch trials NAME --state failed` for the reasons")
        return self.summary

    def _next(self) -> TrialState | str | None:
        """Run the next trial: its end state; "idle" while the last trials run elsewhere,
        "done" when the study has its trials; None when it was lost (see TrialLost). A
        transient database error raised here is waited out, and this is called again."""
        self.settle_faulted()  # before the count: a trial it queues again is counted
        self.slot.acquire()
        try:
            # one read: the study's stop or pause, the budget's limits and the trial counts
            halt, counts = self.control.before_trial()
            if halt is not None:
                log.info("%s", halt.line(self.config.name))
                return "done"
            if not self.limits.may_start():
                log.info("the search time of the hours budget is over: no new trial")
                return "done"
            running, waiting = counts["RUNNING"], counts["WAITING"]
            finished = sum(counts[state.name] for state in COUNTED_STATES)
            if finished >= self.config.n_trials:
                return "done"
            if not waiting and finished + running >= self.config.n_trials:
                return "idle"
            return self._optimize_one()
        finally:
            self.slot.release()  # also when Optuna failed before running the objective

    def _optimize_one(self) -> TrialState | None:
        current: list[optuna.Trial] = []

        returned: list[bool] = []

        def run_trial(trial: optuna.Trial) -> float | tuple[float, ...]:
            self.slot.release()  # a queued trial (a retry) is RUNNING now: the next count sees it
            current.append(trial)
            result = self.objective(trial)
            returned.append(True)
            return result

        try:
            # Optuna checks for stale trials first, as the watcher does while a trial runs
            self.study.optimize(run_trial, n_trials=1, catch=(TrialFailed,),
                                gc_after_trial=False)
        except TrialLost as lost:
            log.warning("trial %d was failed by the heartbeat check while this worker was "
                        "frozen or cut off (%s); dropped: its retry resumes from its "
                        "checkpoint", current[0].number, lost)
            return None
        except TrialInterrupted as fault:
            cause = fault.cause
            again = not isinstance(cause, DatabaseError) or cause.transient
            log.warning("trial %d ended by %s%s", current[0].number, one_line(cause) or "a stop",
                        "; it resumes from its checkpoint" if again else "")
            reason = (interrupted_reason(cause) if isinstance(cause, KeyboardInterrupt)
                      else one_line(cause))
            self.to_fail[current[0]._trial_id] = (again, reason)
            raise cause from None
        except Exception:
            # The trial ended here, but its heartbeat was late (blocked, frozen) and another
            # worker's check failed it and queued its retry first: Optuna's tell then fails (as
            # "Should not reach." in 5.x). Same as TrialLost: the retry owns the trial now.
            if not (returned and self._failed_elsewhere(current[0])):
                raise
            log.warning("trial %d ended here after the heartbeat check had failed it (its "
                        "heartbeat was late); dropped: its retry runs it again",
                        current[0].number)
            return None
        # as Optuna's tell ended it (no trial: Optuna failed before the objective ran)
        state = self.storage.ended_here(current[0]._trial_id) if current else None
        state = TrialState.FAIL if state is None else state
        if state == TrialState.COMPLETE:
            self.summary.complete += 1
        elif state == TrialState.PRUNED:
            self.summary.pruned += 1
        else:
            self.summary.failed += 1
        return state

    def _study_gone(self) -> HpsearchError | None:
        """The one line that says what to run if the study was deleted or renamed (copied and
        deleted, as optuna-dashboard does) in Optuna under this worker; else None."""
        try:
            row = self.objective.recorder.study_row(self.config.name)
        except BrokenLink as exc:
            return exc
        except Exception:  # the error being reported is the one that matters
            return None
        return None if row is not None else HpsearchError(
            f"study {self.config.name!r} was deleted while this worker ran")

    def _failed_elsewhere(self, trial: optuna.Trial) -> bool:
        with connection_scope(self.objective.recorder.engine) as conn:
            return trial_state(conn, trial._trial_id) == TrialState.FAIL.name

    def settle_faulted(self, url: str | None = None) -> None:
        """Fail each trial a fault ended (Optuna left it running) and, unless the fault was a
        permanent error, queue a copy that resumes from its checkpoint (a stop or an outage is
        not the trial's fault: whatever max_retry says), as the heartbeat check does for a
        dead worker's trial. Failing it is a compare-and-set, as the check's: if the check
        failed it first, the check queued the copy, and this queues none. `url`: stopping, so
        the database is tried once, not waited for."""
        if not (self.to_fail or self.to_copy):
            return
        storage = self.study._storage
        try:
            # under the slot lock, as the heartbeat check: no count between failing a trial
            # and queueing its copy (it would start a new trial in the copy's place)
            self.slot.acquire()
            for trial_id, ended in sorted(self.to_fail.items()):
                try:
                    if storage.set_trial_state_values(trial_id, TrialState.FAIL):
                        self.to_copy[trial_id] = ended
                except optuna.exceptions.UpdateFinishedTrialError:
                    pass  # failed by the heartbeat check, which queued the copy
                del self.to_fail[trial_id]
            for trial_id, (again, reason) in sorted(self.to_copy.items()):
                # our row too, where the fault kept the objective from recording its end
                self.objective.recorder.mark_dead(trial_id, reason)
                if again:
                    self.retry(self.study, storage.get_trial(trial_id))
                del self.to_copy[trial_id]
        except Exception as exc:
            if url is None:
                raise  # between trials: waited out, then tried again
            log.warning("stopped trial not queued again (%s): the heartbeat check of the "
                        "next run queues it", as_database_error(exc, url) or exc)
        finally:
            self.slot.release()


def until_the_database_answers(step: Callable[[], T], url: str) -> T:
    """Run `step`, waiting out transient database errors for as long as they last (saying so
    now and then); a stop request ends the wait. Anything else is raised at once."""
    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(lambda exc: _transient(exc, url)), reraise=True,
        sleep=stop_wait,
        wait=tenacity.wait_exponential(multiplier=0.2, max=5), before_sleep=_say_waiting)
    result = retrying(step)
    if retrying.statistics.get("attempt_number", 1) > 1:
        log.warning("database back after %.0f s",
                    retrying.statistics.get("delay_since_first_attempt", 0))
    return result


def _transient(exc: BaseException, url: str) -> bool:
    error = as_database_error(exc, url)
    return error is not None and error.transient


def _say_waiting(state: tenacity.RetryCallState) -> None:
    if state.attempt_number == 1 or state.attempt_number % 7 == 0:
        exc = state.outcome.exception() if state.outcome else None
        reason = error.reason if exc and (error := as_database_error(exc)) else exc
        log.warning("database unavailable (%s); retrying with back-off until it is back, "
                    "%.0f s so far", reason, state.seconds_since_start)


class StaleTrialWatcher(threading.Thread):
    """Fails other workers' dead trials (no heartbeat within the grace period) while this
    worker trains, so their retry is queued within the grace period rather than whenever a
    worker next starts a trial (Optuna only checks then). Every worker has one, but the
    storage lets only one check per study per interval through (claim_stale_check): the
    others' attempts cost one UPDATE each."""

    def __init__(self, study: optuna.Study, storage: Storage, slot: TrialSlotLock) -> None:
        super().__init__(name="stale-trial-watcher", daemon=True)
        self.study, self.storage, self.slot = study, storage, slot
        self._stopped = threading.Event()

    def run(self) -> None:
        delay = self.storage.stale_check_interval
        while not self._stopped.wait(delay):
            try:
                self.slot.acquire()
                _fail_stale(self.study)
            except Exception as exc:  # a missed check is retried next interval
                log.warning("stale-trial check failed: %s", as_database_error(exc) or repr(exc))
            finally:
                self.slot.release()
                self.storage.remove_session()
            # due an interval after this process's last try (Optuna's at a trial's start too)
            delay = max(0.1, self.storage.next_stale_check - time.time())

    def stop(self) -> None:
        self._stopped.set()
        if stop_requested() is None:  # a stop does not wait: the thread dies with the process
            self.join(timeout=5)
        self.slot.close()


def _one_line_failures(record: logging.LogRecord) -> bool:
    """Optuna logs a failed trial with its traceback; for a stop or a database error the one
    line says everything."""
    if record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt | DatabaseError):
        record.exc_info = record.exc_text = None  # the text too: it may be formatted already
    return True


# the logger of optuna.study._optimize, which reports failed trials
logging.getLogger("optuna.study._optimize").addFilter(_one_line_failures)


def _fail_stale(study: optuna.Study) -> None:
    with warnings.catch_warnings(action="ignore", category=ExperimentalWarning):
        optuna.storages.fail_stale_trials(study)
