"""Pruning on one objective (search/pruning.py) and where a trial is asked (search/objective.py):
the pruned objective's direction decides, and a trial that trained every epoch is complete."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from hpsearch.search import space
from hpsearch.search.pruning import PruningView
from hpsearch.search.study_file import parse_study
from hpsearch.spec import StudyConfig
from tests.helpers import run_in_process, stored_trials
from tests.study_files import write_tiny_study


def _pruned_on_loss() -> StudyConfig:
    """A study of val_acc (maximised) and val_loss (minimised), pruned on val_loss."""
    return parse_study({"study": {"name": "mo", "objectives": ["val_acc:max", "val_loss:min"],
                                  "pruner": "median"},
                        "pruner": {"objective": "val_loss", "startup_trials": 1},
                        "space": {"lr": {"low": 1e-4, "high": 1e-1, "log": True}}})


def test_the_view_prunes_a_high_loss_not_a_low_one() -> None:
    """Through the view, the median pruner compares val_loss as minimised: above the complete
    trial's loss is pruned, below it is not (the study's first objective is maximised)."""
    study = optuna.create_study(directions=["maximize", "minimize"],
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=1))
    view = PruningView(_pruned_on_loss())
    done = study.ask()
    view.trial(done).report(0.5, 1)
    study.tell(done, [0.8, 0.5])
    high, low = study.ask(), study.ask()
    view.trial(high).report(0.9, 1)
    view.trial(low).report(0.1, 1)
    assert view.trial(high).should_prune() and not view.trial(low).should_prune()


def test_tpe_ranks_pruned_trials_in_the_pruned_objectives_direction(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """TPE splits pruned trials on `study.direction`: the study it is handed has val_loss's."""
    seen: list[optuna.study.StudyDirection] = []

    def record(self: optuna.samplers.TPESampler, study: optuna.Study,
               *args: object) -> float:
        seen.append(study.direction)
        return 0.01

    monkeypatch.setattr(optuna.samplers.TPESampler, "sample_independent", record)
    sampler = space.make_sampler(_pruned_on_loss())
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    study.optimize(lambda trial: (trial.suggest_float("lr", 1e-4, 1e-1), 0.0), n_trials=1)
    assert seen == [optuna.study.StudyDirection.MINIMIZE]


class _AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return True


def test_a_trial_that_trained_every_epoch_is_complete(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The pruner is not asked at the trial's last epoch: Hyperband's last rung (here a pruner
    that always prunes) would record a fully trained trial as pruned."""
    monkeypatch.setattr(space, "make_pruner", lambda config: _AlwaysPrune())
    path = write_tiny_study(tmp_path, n_trials=2, epochs=1, pruner="median", dry_run=0.0)
    url = f"sqlite:///{tmp_path / 'tiny.db'}"
    run_in_process(path, url)
    trials = stored_trials(url, "tiny")
    assert [(t.state, t.epochs_run) for t in trials] == [("complete", 1)] * 2, [
        t.reason for t in trials]
