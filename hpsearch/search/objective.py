"""One Optuna trial: sample params → train → record each epoch → report → prune.

The pruned objective (the first, or `[pruner] objective`) is reported each epoch, in a study of
several objectives too (hpsearch.search.pruning); a multi-objective study gets every
objective's value at the end (hpsearch.objectives).

The glue between the trainer (which knows nothing of Optuna or the database), Optuna, and the
recorder. Divergent runs end as pruned trials with their reason stored. No torch here: the
trainer is handed in (hpsearch.trainer.torch_trainer for real training, hpsearch.search.dryrun
for dry runs).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import optuna
from optuna.trial import TrialState

from hpsearch.db.errors import as_database_error
from hpsearch.db.recorder import Recorder
from hpsearch.errors import (
    CheckpointError,
    HpsearchError,
    TrainingDiverged,
    TrialInterrupted,
    TrialLost,
    out_of_memory,
)
from hpsearch.files import move_into_place
from hpsearch.masking import one_line
from hpsearch.metrics import EpochMetrics
from hpsearch.objectives import epoch_values
from hpsearch.params import TrialParams
from hpsearch.paths import MODEL_PREFIX, checkpoint_folder, checkpoint_path, model_path
from hpsearch.search.pruning import PruningView
from hpsearch.search.space import suggest
from hpsearch.spec import StudyConfig
from hpsearch.stop import check_stop, interrupted_reason

log = logging.getLogger(__name__)
COUNTED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)


def _set_user_attrs(recorder: Recorder, trial: optuna.Trial, attrs: dict[str, Any]) -> None:
    """Optuna user attributes (shown by optuna-dashboard and `optuna trials`), in one write;
    None values are skipped. They copy what our tables hold, so a write that fails costs only
    the copy: it is logged, never allowed to fail the trial or hide the error ending it."""
    try:
        recorder.set_user_attrs(trial._trial_id, {k: v for k, v in attrs.items() if v is not None})
    except Exception as exc:  # see the docstring
        log.warning("trial %d: user attributes %s not set (%s)", trial.number,
                    ", ".join(attrs), as_database_error(exc) or exc)


class TrialRun(Protocol):
    """One run, built and ready: iterating it trains and yields each epoch's metrics; stopping
    the loop stops the training (hpsearch.trainer.loop.Training is one)."""

    n_params: int | None  # known before the first epoch (None: no model, a dry run)

    def __iter__(self) -> Iterator[EpochMetrics]: ...

    def save_model(self, path: Path, **info: Any) -> None:
        """Write the model as it is now to a self-contained model file, with `info` (asked only
        of a trainer that keeps checkpoints)."""
        ...


class TrialTrainer(Protocol):
    """What the objective needs of a trainer."""

    device: str  # recorded on each trial row, e.g. cpu, cuda:0, dry-run
    keeps_checkpoints: bool  # False: nothing to resume from, a retry starts from epoch 1

    def precision(self, params: TrialParams) -> str | None: ...

    def load_checkpoint(self, path: Path) -> dict[str, Any]: ...

    def start(self, params: TrialParams, *, seed: int, checkpoint: Path | None,
              resume_from: Path | None, fraction: float | None = None,
              stop_after: int | None = None) -> TrialRun:
        """A run on the first `fraction` of the training split (None: all of it), up to epoch
        `stop_after` (None: params.epochs); the model is built once, here."""
        ...


class Objective:
    def __init__(self, config: StudyConfig, study_row_id: int, trainer: TrialTrainer,
                 recorder: Recorder, worker: str,
                 search_over: Callable[[dict[str, Any]], bool] = lambda _: False) -> None:
        self.config = config
        # asked after each epoch, with the study attributes its write read back (the
        # recorder's WATCHED): the hours budget's search time is over (search/hours.py)
        self.search_over = search_over
        self.study_row_id = study_row_id
        self.trainer = trainer
        self.recorder = recorder
        self.worker = worker
        self.pruning = PruningView(config)

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, ...]:
        """Run the trial. Its own failure (a training error, say) is recorded and raised as
        TrialFailed; a fault that is not its own (a database error, a stop) is recorded as its
        reason where the database allows, and raised as TrialInterrupted: the worker queues
        the trial again, to resume from its checkpoint. TrialLost: it was failed meanwhile."""
        try:
            return self._run(trial)
        except KeyboardInterrupt as stop:  # Ctrl-C, SIGTERM or SIGHUP (hpsearch.stop)
            raise TrialInterrupted(stop) from None
        except (optuna.TrialPruned, TrialFailed):
            raise
        except Exception as exc:
            error = as_database_error(exc, self.recorder.url)
            if error is None:
                raise
            raise TrialInterrupted(error) from exc

    def _run(self, trial: optuna.Trial) -> float | tuple[float, ...]:
        applied, sampled = suggest(trial, self.config)
        params = TrialParams.from_dict(applied)  # the inactive ones' defaults do nothing
        # the trials this one re-runs (set by Optuna's retry callback), as the ask loaded the
        # trial: no read of its own
        history = list(trial._cached_frozen_trial.system_attrs.get("retry_history", []))
        # the seed follows the first attempt, so a resumed retry continues that run
        seed = self.config.seed + (history[0] if history else trial.number)
        keeps = self.trainer.keeps_checkpoints
        resume_from, resumed_number, state, note = (
            self._latest_checkpoint(history) if keeps else (None, -1, None, None))
        precision = self.trainer.precision(params)
        check_stop()  # a stop while the trial was set up: nothing of ours is written
        acting = {k: v for k, v in params.to_dict().items() if k in applied}
        row = self.recorder.start_trial(self.study_row_id, trial.number, trial._trial_id,
                                        acting, sampled,
                                        self.worker, retried_from=history[-1] if history else None,
                                        seed=seed,
                                        precision=precision, device=self.trainer.device)
        primary = self.config.objectives[0]  # the trial's value and best epoch follow it
        pruned = self.config.pruned  # reported every epoch; the pruner follows it
        started = time.monotonic()
        n_params: int | None = None
        checkpoint = checkpoint_path(self.config.workers.checkpoint_dir, self.config.name,
                                     trial.number) if keeps else None
        # the model at the peak epoch, written at each new peak; kept if the trial ends among
        # the study's best (`_keep_best_models`)
        model = model_path(self.config.workers.checkpoint_dir, self.config.name,
                           trial.number) if keeps and self.config.workers.keep_models else None

        # every epoch's metrics (a resumed trial's earlier ones too), by epoch: the rung ends
        # compare them, and the objectives' values are taken from them at the end
        seen: dict[int, dict[str, Any]] = {}
        # with rungs the trials are compared at the end of each rung only
        each_epoch = not self.config.rungs
        stopped: str | None = None  # why the loop was stopped early, if it was

        # from here on every way out records the trial's end with its reason; an exception
        # that escaped would leave the row "running" until another worker called it dead
        try:
            reported = self.pruning.trial(trial)  # whom the epochs are reported to
            if resume_from is not None and state is not None:
                log.info("trial %d: resuming from %s (epoch %d of trial %d)", trial.number,
                         resume_from, int(state["epoch"]), resumed_number)
                previous = self.recorder.trial_id(self.study_row_id, resumed_number)
                if previous is not None:
                    self.recorder.copy_epochs(previous, row, int(state["epoch"]), primary)
                for done_epoch in state.get("history", []):
                    seen[int(done_epoch["epoch"])] = done_epoch
                self._take_over_model(resumed_number, model)
            done = max(seen, default=0)  # epochs a retried trial's checkpoint already holds
            for stage, (fraction, end) in enumerate(self._stages()):
                if end is None or end > done:
                    run = self.trainer.start(params, seed=seed,
                                             checkpoint=checkpoint,
                                             resume_from=resume_from if done else None,
                                             fraction=fraction, stop_after=end)
                    if n_params is None:  # known before the first epoch: pruned trials have it
                        n_params = run.n_params
                        # for optuna-dashboard and `optuna trials`: what is known now, in one go
                        _set_user_attrs(self.recorder, trial, {
                            "n_params": n_params, "worker": self.worker,
                            "precision": precision, "device": self.trainer.device})
                    for metrics in run:
                        written = self.recorder.record_epoch(row, metrics, primary, fraction)
                        if written.best_epoch == metrics.epoch and model:  # a new peak
                            run.save_model(model, study=self.config.name, trial=trial.number,
                                           seed=seed, split_seed=self.config.seed,
                                           epoch=metrics.epoch, metrics=metrics.to_dict())
                        seen[metrics.epoch] = metrics.to_dict()
                        if each_epoch:
                            value = getattr(metrics, pruned.measure)
                            reported.report(value, metrics.epoch)
                            # not at the last epoch: a trial that trained them all is complete
                            # (Hyperband's last rung would prune it, off the Pareto front)
                            if metrics.epoch < params.epochs and reported.should_prune():
                                stopped = (f"pruned at epoch {metrics.epoch} "
                                           f"({pruned.measure} {value:.4f})")
                        if (stopped is None and metrics.epoch < self.config.max_epochs
                                and self.search_over(written.study_attrs)):
                            stopped = (f"stopped at epoch {metrics.epoch}: the search time of "
                                       "the hours budget is over")
                        if stopped is not None:
                            break
                    if stopped is not None:
                        break
                    done, resume_from = max(seen, default=done), checkpoint
                if end is not None and stage < len(self.config.rungs) - 1:
                    stopped = self._rung_end(reported, stage, seen)
                    if stopped is not None:
                        break
        except TrainingDiverged as exc:
            self._finish(trial, row, "pruned", started, n_params,
                         _noted(note, f"diverged: {exc}"), checkpoint)
            raise optuna.TrialPruned(f"diverged: {exc}") from None
        except optuna.exceptions.UpdateFinishedTrialError as exc:  # Optuna failed it already
            raise TrialLost(str(exc)) from None
        except KeyboardInterrupt as exc:  # its checkpoint is kept: the worker queues it again
            self._finish_faulted(trial, row, started, n_params, interrupted_reason(exc))
            raise
        except Exception as exc:
            error = as_database_error(exc, self.recorder.url)
            if error is not None:  # not the trial's fault: queued again, like a stop
                self._finish_faulted(trial, row, started, n_params, failure_reason(error))
                raise error from exc
            reason = _noted(note, failure_reason(exc))
            self._finish(trial, row, "failed", started, n_params, reason, None)
            raise TrialFailed(reason) from exc
        if stopped is not None:
            self._finish(trial, row, "pruned", started, n_params, _noted(note, stopped),
                         checkpoint)
            raise optuna.TrialPruned(stopped)
        self._finish(trial, row, "complete", started, n_params, note, checkpoint)
        values = tuple(v if v is not None else float("nan") for v in epoch_values(
            self.config.objectives, [seen[e] for e in sorted(seen)], n_params))
        return values if self.config.multi_objective else values[0]

    def _stages(self) -> list[tuple[float | None, int | None]]:
        """(training-data fraction, last epoch) of each stage of a trial: one stage of the whole
        split and every epoch, or one per rung of a multi-fidelity budget. A rung RESUMES from
        the previous one's checkpoint (weights, optimiser and schedule carry over; only images
        are added, so nothing restarts)."""
        if not self.config.rungs:
            return [(None, None)]
        return [(rung.fraction, rung.epochs) for rung in self.config.rungs]

    def _rung_end(self, trial: optuna.Trial, index: int,
                  seen: dict[int, dict[str, Any]]) -> str | None:
        """At the end of every rung but the last, its last epoch's pruned objective is reported
        as one intermediate value at step reduction_factor**index (the resources of Optuna's
        successive halving and Hyperband with min_resource 1), and the pruner decides the
        promotion. Returns why the trial is pruned, or None when it is promoted."""
        rung = self.config.rungs[index]
        pruned = self.config.pruned
        value = float(seen[rung.epochs][pruned.measure])
        trial.report(value, self.config.pruner_options["reduction_factor"] ** index)
        if not trial.should_prune():
            return None
        return (f"pruned at the end of rung {index + 1} (fraction {rung.fraction:g}, epoch "
                f"{rung.epochs}, {pruned.measure} {value:.4f})")

    def _finish(self, trial: optuna.Trial, row: int, state: str, started: float,
                n_params: int | None, reason: str | None, checkpoint: Path | None) -> None:
        # a reason is shown in reports and tables: a driver's error may carry a connection string
        reason = one_line(reason) if reason else None
        best_epoch = self.recorder.finish_trial(row, state, time.monotonic() - started,
                                                n_params, reason)
        # the rest of the dashboard's metadata, once at the end (each attribute is a write)
        _set_user_attrs(self.recorder, trial, {"best_epoch": best_epoch, "reason": reason})
        if checkpoint is not None:  # finished trials need no resume point, nor a model
            checkpoint.unlink(missing_ok=True)  # unless they are among the best
            self._keep_best_models()

    def _finish_faulted(self, trial: optuna.Trial, row: int, started: float,
                        n_params: int | None, reason: str) -> None:
        """Record why a fault ended the trial, if the database lets us: the fault itself (an
        outage, say) may prevent it, and must not be hidden by that second failure. Its
        checkpoint is kept for the retry."""
        try:
            self._finish(trial, row, "failed", started, n_params, reason, None)
        except Exception as error:  # see the docstring
            log.warning("trial %d: its end not recorded (%s)", trial.number,
                        failure_reason(error))

    def _take_over_model(self, resumed_number: int, model: Path | None) -> None:
        """A retry that resumes another attempt's run takes over its peak model too."""
        if model is None:
            return
        earlier = model_path(self.config.workers.checkpoint_dir, self.config.name,
                             resumed_number)
        if earlier.exists():
            move_into_place(earlier, model)

    def _keep_best_models(self) -> None:
        """After a trial completed or was pruned: of the models in the study's folder, those of
        trials that completed or were pruned and are not among the study's best `keep_models`
        go (its own, or one it pushed out). A running trial's stays, and so does a failed
        one's, like its checkpoint (a retry may resume it)."""
        folder = checkpoint_folder(self.config.workers.checkpoint_dir, self.config.name)
        kept = {int(path.stem.removeprefix(MODEL_PREFIX)): path
                for path in folder.glob(f"{MODEL_PREFIX}*.pt")
                if path.stem.removeprefix(MODEL_PREFIX).isdigit()}
        if not kept:
            return
        for dropped in self.recorder.ended_outside_top(
                self.study_row_id, list(kept), self.config.workers.keep_models,
                self.config.objectives):
            kept[dropped].unlink(missing_ok=True)

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
                state = self.trainer.load_checkpoint(path)
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
    text = one_line(exc)
    memory = out_of_memory(exc)
    if memory is not None:
        return memory
    if isinstance(exc, HpsearchError):  # our own messages are already sentences
        return text
    return f"{type(exc).__name__}: {text}"


class TrialFailed(HpsearchError):
    """A trial ended by its own error (its reason recorded): the worker goes on to the next."""


def _noted(note: str | None, reason: str) -> str:
    return f"{reason} ({note})" if note else reason
