"""One Optuna trial: sample params → train → record each epoch → report → prune.

The glue between the trainer (which knows nothing of Optuna or the database), Optuna, and the
recorder. Divergent runs end as pruned trials with their reason stored.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from hpsearch.config import StudyConfig
from hpsearch.data import TrainValData
from hpsearch.db.engine import mask_secrets
from hpsearch.db.errors import DatabaseError
from hpsearch.db.recorder import Recorder
from hpsearch.errors import HpsearchError
from hpsearch.metrics import EpochMetrics
from hpsearch.model import build_model, count_parameters
from hpsearch.paths import checkpoint_path
from hpsearch.runtime import resolve_device, resolve_precision
from hpsearch.space import suggest
from hpsearch.stop import interrupted_reason
from hpsearch.train import CheckpointError, TrainingDiverged, load_checkpoint, train

log = logging.getLogger(__name__)
COUNTED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)
# how torch's CPU and CUDA allocators word a failed allocation
OOM_SIGNS = ("can't allocate memory", "not enough memory", "out of memory")


def _track_peak(peak: dict[str, Any], val_acc: float, epoch: int) -> None:
    """Keep the best epoch (the earliest of equal ones), as the trial row's best_epoch."""
    if not peak or val_acc > peak["val_acc"]:
        peak.update(val_acc=val_acc, epoch=epoch)


def _set_user_attrs(trial: optuna.Trial, attrs: dict[str, Any]) -> None:
    """Optuna user attributes (shown by optuna-dashboard and `optuna trials`); None values are
    skipped. They copy what our tables hold, so a write that fails costs only the copy: it is
    logged, never allowed to fail the trial or hide the error that is ending it."""
    for key, value in attrs.items():
        if value is None:
            continue
        try:
            trial.set_user_attr(key, value)
        except Exception as exc:  # noqa: BLE001 - see the docstring
            log.warning("trial %d: user attribute %s not set (%s)", trial.number, key, exc)


def retry_history(trial: optuna.Trial) -> list[int]:
    """Numbers of the dead trials this one re-runs, oldest first (set by Optuna's retry
    callback in the trial's system attributes)."""
    frozen = trial.study._storage.get_trial(trial._trial_id)
    return list(frozen.system_attrs.get("retry_history", []))


class Objective:
    def __init__(self, config: StudyConfig, study_row_id: int, data: TrainValData,
                 recorder: Recorder, worker: str, device: str = "auto") -> None:
        self.config = config
        self.study_row_id = study_row_id
        self.data = data
        self.recorder = recorder
        self.worker = worker
        self.device = resolve_device(device)  # once per worker: "auto" -> cpu or cuda
        # Optuna id of the trial a stop request would cut short: set from the start of a trial
        # (a stop while it is set up counts too) until its end is recorded
        self.interrupted: int | None = None
        # a permanent database error met by the last trial: the worker stops on it (Optuna
        # catches every exception of an objective and would go on to the next trial)
        self.fatal: DatabaseError | None = None

    def __call__(self, trial: optuna.Trial) -> float:
        self.fatal = None
        try:
            return self._run(trial)
        except Exception as exc:
            self.interrupted = None  # ended by its own error: no stop's to queue again
            if isinstance(exc, DatabaseError):
                self.fatal = exc
            raise

    def _run(self, trial: optuna.Trial) -> float:
        self.interrupted = trial._trial_id
        sampled = suggest(trial, self.config.space)
        params = self.config.params_for(sampled)
        history = retry_history(trial)
        original = history[0] if history else trial.number
        resume_from, resumed_number, state, note = self._latest_checkpoint(history)
        # what it runs with ("auto" resolved), recorded so trials from other machines compare
        precision = resolve_precision(params.precision, self.device).precision
        row = self.recorder.start_trial(self.study_row_id, trial.number, trial._trial_id,
                                        params.to_dict(), list(sampled), self.worker,
                                        retried_from=history[-1] if history else None,
                                        precision=precision, device=str(self.device))
        peak: dict[str, Any] = {}  # the best epoch so far: {"val_acc": ..., "epoch": ...}
        started = time.monotonic()
        n_params: int | None = None
        checkpoint = checkpoint_path(self.config.workers.checkpoint_dir, self.config.name,
                                     trial.number)

        def on_epoch(metrics: EpochMetrics) -> None:
            self.recorder.record_epoch(row, metrics)
            _track_peak(peak, metrics.val_acc, metrics.epoch)
            trial.report(metrics.val_acc, metrics.epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(
                    f"pruned at epoch {metrics.epoch} (val acc {metrics.val_acc:.4f})")

        # from here on every way out records the trial's end with its reason; an exception
        # that escaped would leave the row "running" until another worker called it dead
        try:
            if resume_from is not None and state is not None:
                done = int(state["epoch"])
                log.info("trial %d: resuming from %s (epoch %d of trial %d)", trial.number,
                         resume_from, done, resumed_number)
                previous = self.recorder.trial_id(self.study_row_id, resumed_number)
                if previous is not None:
                    self.recorder.copy_epochs(previous, row, done)
                for done_epoch in state.get("history", []):
                    _track_peak(peak, done_epoch["val_acc"], done_epoch["epoch"])
            # counted up front (building the model takes milliseconds) so pruned and failed
            # trials have their size too
            n_params = count_parameters(build_model(params, self.data.image_shape))
            # for optuna-dashboard and `optuna trials`: what is known now, in one go
            _set_user_attrs(trial, {"n_params": n_params, "worker": self.worker,
                                    "precision": precision, "device": str(self.device)})
            # the seed follows the original trial, so a resumed retry continues the same run
            result = train(params, self.data, seed=self.config.seed + original,
                           device=str(self.device), on_epoch=on_epoch, checkpoint=checkpoint,
                           resume_from=resume_from)
        except optuna.TrialPruned as exc:
            self._finish(trial, row, "pruned", started, n_params, _noted(note, str(exc)),
                         checkpoint, peak)
            raise
        except TrainingDiverged as exc:
            self._finish(trial, row, "pruned", started, n_params,
                         _noted(note, f"diverged: {exc}"), checkpoint, peak)
            raise optuna.TrialPruned(f"diverged: {exc}") from None
        except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM or SIGHUP (hpsearch.stop)
            # its checkpoint is kept: the worker queues it again. Marking it may fail (a stop
            # during an outage gives up waiting): the stop goes on, the heartbeat check fails
            # the trial later and its retry resumes from the checkpoint all the same
            try:
                self._finish(trial, row, "failed", started, n_params, interrupted_reason(exc),
                             None, peak, stopped=True)
            except Exception as error:  # noqa: BLE001 - the stop must not become this error
                log.warning("trial %d: stop not recorded (%s)", trial.number, error)
            raise
        except Exception as exc:
            self._finish(trial, row, "failed", started, n_params,
                         _noted(note, failure_reason(exc)), None, peak)
            raise
        self._finish(trial, row, "complete", started, n_params, note, checkpoint, peak)
        best = result.best
        return best.val_acc if best else 0.0

    def _finish(self, trial: optuna.Trial, row: int, state: str, started: float,
                n_params: int | None, reason: str | None, checkpoint: Path | None,
                peak: dict[str, Any], *, stopped: bool = False) -> None:
        # a reason is shown in reports and tables: a driver's error may carry a connection string
        reason = mask_secrets(reason) if reason else None
        self.recorder.finish_trial(row, state, time.monotonic() - started, n_params, reason)
        if not stopped:
            self.interrupted = None  # ended for its own reasons: a stop now is not its fault
        # the rest of the dashboard's metadata, once at the end (each attribute is a write)
        _set_user_attrs(trial, {"best_epoch": peak.get("epoch"), "reason": reason})
        if checkpoint is not None:  # finished trials need no resume point
            checkpoint.unlink(missing_ok=True)

    def _latest_checkpoint(self, history: list[int]
                           ) -> tuple[Path | None, int, dict[str, Any] | None, str | None]:
        """The newest readable checkpoint left by the trials this one retries: its path, the
        trial that wrote it, its state, and a note (stored as the trial's reason) when a
        newer one was unreadable and an older one, or none (from scratch), was used instead."""
        unreadable: list[str] = []
        for number in reversed(history):
            path = checkpoint_path(self.config.workers.checkpoint_dir, self.config.name, number)
            if not path.exists():
                continue
            try:
                state = load_checkpoint(path)
                done = int(state["epoch"])
            except (CheckpointError, KeyError, TypeError, ValueError) as exc:
                log.warning("skipping checkpoint of trial %d: %s", number, exc)
                unreadable.append(f"trial {number}'s checkpoint {path.name} is unreadable")
                continue
            note = (f"{'; '.join(unreadable)}: resumed from trial {number}'s checkpoint "
                    f"(epoch {done})") if unreadable else None
            return path, number, state, note
        if unreadable:
            note = f"{'; '.join(unreadable)}: trained from scratch"
            log.warning("%s", note)
            return None, -1, None, note
        return None, -1, None, None


def failure_reason(exc: BaseException) -> str:
    """The reason stored for a trial that failed with `exc`, on one line; running out of
    memory is said plainly (torch reports it as a RuntimeError from its allocator)."""
    text = " ".join(str(exc).split())
    if isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and any(
            sign in text for sign in OOM_SIGNS)):
        # "[enforce fail at alloc_cpu.cpp:117] err == 0. DefaultCPUAllocator: can't ..."
        allocator = re.search(r"\w*Allocator: .*", text)
        return f"out of memory: {allocator.group(0) if allocator else text or 'MemoryError'}"
    if isinstance(exc, HpsearchError):  # our own messages are already sentences
        return text
    return f"{type(exc).__name__}: {text}"


def _noted(note: str | None, reason: str) -> str:
    return f"{reason} ({note})" if note else reason
