"""One Optuna trial: sample params → train → record each epoch → report → prune.

The glue between the trainer (which knows nothing of Optuna or the database), Optuna, and the
recorder. Divergent runs end as pruned trials with their reason stored.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from hpsearch.config import StudyConfig
from hpsearch.data import TrainValData
from hpsearch.db.errors import DatabaseError
from hpsearch.db.recorder import Recorder
from hpsearch.metrics import EpochMetrics
from hpsearch.model import build_model, count_parameters
from hpsearch.paths import checkpoint_path
from hpsearch.space import suggest
from hpsearch.train import TrainingDiverged, load_checkpoint, train

log = logging.getLogger(__name__)
COUNTED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)
ACTIVE_STATES = (TrialState.RUNNING, TrialState.WAITING)


class SurplusTrial(Exception):
    """Two workers started the study's last trial at once; the later one gives way."""


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
        self.device = device
        # a permanent database error met by the last trial: the worker stops on it (Optuna
        # catches every exception of an objective and would go on to the next trial)
        self.fatal: DatabaseError | None = None

    def __call__(self, trial: optuna.Trial) -> float:
        self.fatal = None
        try:
            return self._run(trial)
        except DatabaseError as exc:
            self.fatal = exc
            raise

    def _run(self, trial: optuna.Trial) -> float:
        self._check_not_surplus(trial)
        sampled = suggest(trial, self.config.space)
        params = self.config.params_for(sampled)
        history = retry_history(trial)
        original = history[0] if history else trial.number
        resume_from, resumed_number = self._latest_checkpoint(history)
        row = self.recorder.start_trial(self.study_row_id, trial.number, trial._trial_id,
                                        sampled, self.worker,
                                        retried_from=history[-1] if history else None)
        if resume_from is not None:
            done = int(load_checkpoint(resume_from)["epoch"])
            log.info("trial %d: resuming from %s (epoch %d of trial %d)", trial.number,
                     resume_from, done, resumed_number)
            previous = self.recorder.trial_id(self.study_row_id, resumed_number)
            if previous is not None:
                self.recorder.copy_epochs(previous, row, done)
        started = time.monotonic()
        # counted up front (building the model takes milliseconds) so pruned and failed
        # trials have their size too
        n_params: int | None = count_parameters(build_model(params, self.data.image_shape))

        def on_epoch(metrics: EpochMetrics) -> None:
            self.recorder.record_epoch(row, metrics)
            trial.report(metrics.val_acc, metrics.epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(
                    f"pruned at epoch {metrics.epoch} (val acc {metrics.val_acc:.4f})")

        checkpoint = checkpoint_path(self.config.workers.checkpoint_dir, self.config.name,
                                     trial.number)
        try:
            # the seed follows the original trial, so a resumed retry continues the same run
            result = train(params, self.data, seed=self.config.seed + original,
                           device=self.device, on_epoch=on_epoch, checkpoint=checkpoint,
                           resume_from=resume_from)
        except optuna.TrialPruned as exc:
            self._finish(row, "pruned", started, n_params, str(exc), checkpoint)
            raise
        except TrainingDiverged as exc:
            self._finish(row, "pruned", started, n_params, f"diverged: {exc}", checkpoint)
            raise optuna.TrialPruned(f"diverged: {exc}") from None
        except KeyboardInterrupt:
            self._finish(row, "failed", started, n_params, "interrupted (Ctrl-C)", None)
            raise
        except Exception as exc:
            self._finish(row, "failed", started, n_params, f"{type(exc).__name__}: {exc}", None)
            raise
        self._finish(row, "complete", started, n_params, None, checkpoint)
        best = result.best
        return best.val_acc if best else 0.0

    def _finish(self, row: int, state: str, started: float, n_params: int | None,
                reason: str | None, checkpoint: Path | None) -> None:
        self.recorder.finish_trial(row, state, time.monotonic() - started, n_params, reason)
        if checkpoint is not None:  # finished trials need no resume point
            checkpoint.unlink(missing_ok=True)

    def _latest_checkpoint(self, history: list[int]) -> tuple[Path | None, int]:
        """The newest checkpoint left by the trials this one retries."""
        for number in reversed(history):
            path = checkpoint_path(self.config.workers.checkpoint_dir, self.config.name, number)
            if path.exists():
                return path, number
        return None, -1

    def _check_not_surplus(self, trial: optuna.Trial) -> None:
        """Close the race in which several workers start the last trial together: a trial whose
        position among counted and active trials is past n_trials is not run."""
        storage, study_id = trial.study._storage, trial.study._study_id
        earlier = [t for t in storage.get_all_trials(study_id, deepcopy=False,
                                                     states=COUNTED_STATES + ACTIVE_STATES)
                   if t.number < trial.number]
        if len(earlier) >= self.config.n_trials:
            trial.set_user_attr("surplus", True)
            raise SurplusTrial(f"the study already has {self.config.n_trials} trials")
