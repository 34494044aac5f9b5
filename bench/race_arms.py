"""The race's arms that train in this process, on hpsearch's trainer used as a library (so the
race compares ways of spending the hours, not trainers): (a) the hand-tuned configuration,
(b) plain Optuna (TPE + MedianPruner) and (c) random search + ASHA (Optuna's
SuccessiveHalvingPruner, which implements ASHA). bench/race.py runs them; bench/race_hpsearch.py
is arm (d).

Every arm gets a wall-clock budget that includes its final model and the one test pass. Each
records every validation accuracy it sees with the seconds since the arm started (the anytime
curve), then the test accuracy of the one model it chose on validation alone.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna

from hpsearch.params import DataOptions, TrialParams
from hpsearch.trainer.data import TrainValData, load_full_train, load_test_split, load_train_val
from hpsearch.trainer.loop import evaluate, fit
from hpsearch.trainer.runtime import resolve_device

# the coursework's best hand-tuned run (studies/reproductions/mixer-1block-adam-plateau-xavier-
# 60ep.toml) with the trainer's default precision (the same for every arm); no compile (a run
# without an epoch count would otherwise count as long enough to compile)
HAND_TUNED = TrialParams(
    model="mixer", patch_size=4, hidden_dim=128, token_mlp_dim=64, channel_mlp_dim=512,
    num_blocks=1, activation="gelu", init="xavier_uniform", optimizer="adam", lr=1e-3,
    batch_size=256, scheduler="plateau", gamma=0.1, plateau_metric="val_loss",
    plateau_mode="min", plateau_patience=10, plateau_threshold=1e-4, precision="auto",
    compile="off")
SAFETY = 1.05  # a phase starts only if its estimated time times this still fits
TEST_PASS_S = 15.0  # reserved for loading and scoring the test set (~5-15 s on a loaded core)


@dataclass
class Clock:
    """An arm's wall-clock budget, started when the arm starts."""

    budget_s: float
    started: float = field(default_factory=time.monotonic)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def left(self) -> float:
        return self.budget_s - self.elapsed()


@dataclass
class ArmResult:
    """What an arm×seed run leaves: its curve, its choice and the one test score."""

    curve: list[tuple[float, float]] = field(default_factory=list)  # (seconds, val_acc)
    test_acc: float = math.nan
    used_s: float = math.nan
    chosen: dict[str, Any] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)


def space_params(trial: optuna.Trial, epochs: int) -> TrialParams:
    """The searched space of arms (b)-(d), define-by-run as Optuna's docs write it: the space of
    studies/fashion-mnist-mixer-fidelity.toml (hpsearch's shipped choice for CPUs without fast
    bf16), whose every parameter applies to every trial. bench/race_hpsearch.py writes the same
    space as a study file."""
    return TrialParams(
        model="mixer", patch_size=4,
        hidden_dim=trial.suggest_int("hidden_dim", 64, 128, step=32),
        token_mlp_dim=trial.suggest_int("token_mlp_dim", 64, 128, step=64),
        channel_mlp_dim=trial.suggest_int("channel_mlp_dim", 128, 384, step=128),
        num_blocks=trial.suggest_int("num_blocks", 1, 2),
        activation=trial.suggest_categorical("activation", ["gelu", "relu"]),
        init=trial.suggest_categorical("init", ["default", "xavier_uniform", "kaiming_uniform"]),
        optimizer=trial.suggest_categorical("optimizer", ["adam", "adamw"]),
        lr=trial.suggest_float("lr", 5e-4, 5e-3, log=True),
        weight_decay=trial.suggest_float("weight_decay", 1e-5, 5e-2, log=True),
        batch_size=trial.suggest_categorical("batch_size", [128, 256]),
        label_smoothing=trial.suggest_float("label_smoothing", 0.0, 0.15),
        scheduler="cosine",
        warmup_epochs=trial.suggest_int("warmup_epochs", 0, 2),
        augment=True,
        random_erasing=trial.suggest_float("random_erasing", 0.0, 0.3),
        epochs=epochs, precision="auto", compile="off")


def score_once(model: Any, options: DataOptions, data: TrainValData, setup: Any) -> float:
    """The arm's one look at the test set."""
    test = load_test_split(options, data.mean, data.std)
    return evaluate(model, test, resolve_device("cpu"), setup.autocast_dtype)[1]


def hand_tuned(options: DataOptions, seed: int, clock: Clock) -> ArmResult:
    """(a) One configuration trained for as long as the budget allows, the plateau scheduler
    watching the validation loss; the weights of the best validation epoch are scored."""
    result = ArmResult(chosen=HAND_TUNED.to_dict())
    data = load_train_val(options, seed=seed)
    run = fit(HAND_TUNED.replace(epochs=100_000), data, seed=seed, device="cpu")
    best_acc, best_state, best_epoch = -1.0, None, 0
    for metrics in run:
        result.curve.append((clock.elapsed(), metrics.val_acc))
        if metrics.val_acc > best_acc:
            best_acc, best_epoch = metrics.val_acc, metrics.epoch
            best_state = copy.deepcopy(run.model.state_dict())
        if clock.left() < metrics.seconds * SAFETY + TEST_PASS_S:
            break
    run.model.load_state_dict(best_state)
    scoring = clock.elapsed()
    result.test_acc = score_once(run.model, options, data, run.setup)
    result.used_s = clock.elapsed()
    result.notes = {"epochs": len(run.history), "best_epoch": best_epoch,
                    "test_pass_s": result.used_s - scoring,
                    "last_lr": run.history[-1].lr, "precision": run.setup.precision}
    return result


class Search:
    """(b) and (c): an Optuna study on the searched space, epochs as the only fidelity, ended in
    time to retrain its best trial on train + validation within the budget."""

    def __init__(self, options: DataOptions, seed: int, clock: Clock, epochs: int,
                 sampler: optuna.samplers.BaseSampler, pruner: optuna.pruners.BasePruner
                 ) -> None:
        self.options, self.seed, self.clock, self.epochs = options, seed, clock, epochs
        self.data = load_train_val(options, seed=seed)
        self.full_scale = (len(self.data.train) + len(self.data.val)) / len(self.data.train)
        self.study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
        self.result = ArmResult()
        self.epoch_s: dict[int, float] = {}  # trial number -> mean seconds per epoch

    def retrain_estimate(self, trial_number: int) -> float:
        """Seconds to retrain this trial on train + validation and score it."""
        return (self.epoch_s[trial_number] * self.epochs * self.full_scale * SAFETY
                + TEST_PASS_S)

    def must_stop(self, running: int | None) -> bool:
        """Stop searching when the retraining of the best trial (or of the running one, which
        may become the best) would no longer fit."""
        numbers = [t.number for t in self.study.get_trials(deepcopy=False,
                                                           states=[optuna.trial.TrialState.COMPLETE])]
        if not numbers:  # nothing to retrain yet: the first trial always finishes
            return False
        candidates = [n for n in [*numbers, running] if n is not None and n in self.epoch_s]
        reserve = max((self.retrain_estimate(n) for n in candidates), default=0.0)
        return self.clock.left() < reserve

    def objective(self, trial: optuna.Trial) -> float:
        params = space_params(trial, self.epochs)
        run = fit(params, self.data, seed=self.seed + trial.number, device="cpu")
        accuracy, seconds = 0.0, []
        for metrics in run:
            accuracy = metrics.val_acc
            seconds.append(metrics.seconds)
            self.epoch_s[trial.number] = sum(seconds) / len(seconds)
            self.result.curve.append((self.clock.elapsed(), accuracy))
            trial.report(accuracy, metrics.epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
            if metrics.epoch < self.epochs and self.must_stop(trial.number):
                self.study.stop()
                raise optuna.TrialPruned("out of time")
        return accuracy

    def stop_when_out_of_time(self, study: optuna.Study, _trial: Any) -> None:
        if self.must_stop(None):
            study.stop()

    def run(self) -> ArmResult:
        self.study.optimize(self.objective, callbacks=[self.stop_when_out_of_time])
        best = self.study.best_trial
        params = space_params(optuna.trial.FixedTrial(best.params), self.epochs)
        retraining = self.clock.elapsed()
        full = load_full_train(self.options)
        final = fit(params, full, seed=self.seed, device="cpu")
        final.run_to_end()
        scoring = self.clock.elapsed()
        self.result.test_acc = score_once(final.model, self.options, full, final.setup)
        self.result.used_s = self.clock.elapsed()
        self.result.chosen = {"trial": best.number, "val_acc": best.value, **best.params}
        states = [t.state.name.lower() for t in self.study.trials]
        self.result.notes = {"trials": len(states), "complete": states.count("complete"),
                             "pruned": states.count("pruned"), "epochs": self.epochs,
                             "search_s": retraining, "retrain_s": scoring - retraining,
                             "test_pass_s": self.result.used_s - scoring,
                             "precision": final.setup.precision}
        return self.result


def plain_optuna(options: DataOptions, seed: int, clock: Clock, epochs: int) -> ArmResult:
    """(b) TPE + MedianPruner, Optuna's defaults, as its docs show them."""
    return Search(options, seed, clock, epochs, optuna.samplers.TPESampler(seed=seed),
                  optuna.pruners.MedianPruner()).run()


def random_asha(options: DataOptions, seed: int, clock: Clock, epochs: int) -> ArmResult:
    """(c) Random search + asynchronous successive halving over epochs (reduction factor 3,
    from 1 epoch: rungs at 1, 3, 9, 27... epochs)."""
    return Search(options, seed, clock, epochs, optuna.samplers.RandomSampler(seed=seed),
                  optuna.pruners.SuccessiveHalvingPruner(min_resource=1,
                                                         reduction_factor=3)).run()


ARMS: dict[str, Callable[..., ArmResult]] = {
    "hand": lambda options, seed, clock, epochs: hand_tuned(options, seed, clock),
    "optuna": plain_optuna,
    "asha": random_asha,
}
