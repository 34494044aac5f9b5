"""Pruning on one objective (search/pruning.py) and where a trial is asked (search/objective.py):
the pruned objective's direction decides, and a trial that trained every epoch is complete."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from hpsearch.search import space
from tests.helpers import run_in_process, stored_trials
from tests.study_files import write_tiny_study


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
