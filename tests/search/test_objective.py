"""`Objective`: one trial's loop over the trainer's epochs, with a fake trainer and recorder (no
torch, no database), so each rule is seen on its own: stopping the loop stops the training,
several objectives give Optuna a tuple, and a multi-fidelity budget trains in stages."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest

from hpsearch.db.recorder import EpochWritten
from hpsearch.metrics import EpochMetrics
from hpsearch.params import TrialParams
from hpsearch.search.objective import Objective
from hpsearch.search.study_file import parse_study


class PruneFrom(optuna.pruners.BasePruner):
    """Prunes once a trial has reported at step `step` or later."""

    def __init__(self, step: int | None) -> None:
        self.step = step

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        last = trial.last_step
        return self.step is not None and last is not None and last >= self.step


class Run:
    """A run whose epochs are made only when the loop asks for them (as `fit` trains them)."""

    def __init__(self, trainer: FakeTrainer, params: TrialParams, stop_after: int | None,
                 first: int) -> None:
        self.trainer, self.params, self.first = trainer, params, first
        self.last = params.epochs if stop_after is None else stop_after
        self.n_params = 1234

    def __iter__(self) -> Iterator[EpochMetrics]:
        for epoch in range(self.first, self.last + 1):
            self.trainer.trained.append(epoch)
            acc = 0.5 + 0.1 * epoch
            yield EpochMetrics(epoch=epoch, train_loss=1.0, train_acc=acc, val_loss=1 / epoch,
                               val_acc=acc, lr=0.01, seconds=2.0, images_per_s=100.0)


class FakeTrainer:
    device = "fake"
    keeps_checkpoints = False

    def __init__(self) -> None:
        self.trained: list[int] = []  # every epoch trained, in order
        self.starts: list[tuple[float | None, int | None]] = []

    def precision(self, params: TrialParams) -> str | None:
        return None

    def load_checkpoint(self, path: Path) -> dict[str, Any]:
        raise AssertionError("no checkpoints here")

    def start(self, params: TrialParams, *, seed: int, checkpoint: Path | None,
              resume_from: Path | None, fraction: float | None = None,
              stop_after: int | None = None) -> Run:
        self.starts.append((fraction, stop_after))
        return Run(self, params, stop_after, first=max(self.trained, default=0) + 1)


class FakeRecorder:
    url = "sqlite://"

    def __init__(self) -> None:
        self.epochs: list[tuple[int, float | None]] = []
        self.ends: list[tuple[str, str | None]] = []

    def start_trial(self, *args: Any, **kwargs: Any) -> int:
        return 1

    def record_epoch(self, row: int, metrics: EpochMetrics, primary: Any,
                     fraction: float | None = None) -> EpochWritten:
        self.epochs.append((metrics.epoch, fraction))
        return EpochWritten(best_epoch=None, study_attrs={})

    def finish_trial(self, row: int, state: str, seconds: float, n_params: int | None,
                     reason: str | None) -> None:
        self.ends.append((state, reason))

    def set_user_attrs(self, optuna_trial_id: int, attrs: dict[str, Any]) -> None:
        pass


def objective(study: str, trainer: FakeTrainer, recorder: FakeRecorder) -> Objective:
    doc = {"study": {"name": "t"}, "budget": {"max_epochs": 5}, "data": {"dataset": "synthetic"}}
    doc.update(__import__("tomllib").loads(study))
    return Objective(parse_study(doc), 1, trainer, recorder, "w")  # type: ignore[arg-type]


def test_stopping_the_loop_stops_the_training() -> None:
    """Pruned at epoch 2 of 5: the trainer never trains epoch 3 (the objective stops the loop
    instead of raising from a callback inside the trainer), and the end is recorded once."""
    trainer, recorder = FakeTrainer(), FakeRecorder()
    study = optuna.create_study(direction="maximize", pruner=PruneFrom(2))
    study.optimize(objective('[study]\nname = "t"\npruner = "median"', trainer, recorder),
                   n_trials=1)
    assert trainer.trained == [1, 2]
    assert study.trials[0].state == optuna.trial.TrialState.PRUNED
    assert recorder.ends == [("pruned", "pruned at epoch 2 (val_acc 0.7000)")]


def test_several_objectives_hand_optuna_one_value_each() -> None:
    trainer, recorder = FakeTrainer(), FakeRecorder()
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    study.optimize(objective('[study]\nname = "t"\nobjectives = ["val_acc:max", "params:min", '
                             '"seconds_per_epoch:min"]', trainer, recorder), n_trials=1)
    assert trainer.trained == [1, 2, 3, 4, 5]  # never pruned
    assert study.trials[0].values == pytest.approx([1.0, 1234, 2.0])


def test_rungs_train_in_stages_and_report_at_each_rung_end() -> None:
    """Each rung is one stage of the same loop, on its fraction of the data up to its epoch;
    the first objective at each rung end but the last is reported at reduction_factor**i."""
    trainer, recorder = FakeTrainer(), FakeRecorder()
    study = optuna.create_study(direction="maximize", pruner=PruneFrom(None))
    rungs = ('[study]\nname = "t"\npruner = "successive-halving"\n[pruner]\n'
             'reduction_factor = 3\n[budget]\nrungs = [{fraction = 0.25, epochs = 1}, '
             '{fraction = 0.5, epochs = 3}, {fraction = 1.0, epochs = 5}]')
    study.optimize(objective(rungs, trainer, recorder), n_trials=1)
    assert trainer.starts == [(0.25, 1), (0.5, 3), (1.0, 5)]
    assert trainer.trained == [1, 2, 3, 4, 5]  # each stage trains only its own epochs
    assert recorder.epochs == [(1, 0.25), (2, 0.5), (3, 0.5), (4, 1.0), (5, 1.0)]
    assert study.trials[0].intermediate_values == pytest.approx({1: 0.6, 3: 0.8})

    pruned = optuna.create_study(direction="maximize", pruner=PruneFrom(3))
    trainer = FakeTrainer()
    pruned.optimize(objective(rungs, trainer, FakeRecorder()), n_trials=1)
    assert trainer.trained == [1, 2, 3]  # pruned at the end of the second rung
