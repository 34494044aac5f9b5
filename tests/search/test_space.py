"""Every sampler and pruner named in a study file builds and drives real Optuna trials."""

from __future__ import annotations

import optuna
import pytest

from hpsearch.params import TrialParams
from hpsearch.search.space import make_pruner, make_sampler, suggest
from hpsearch.search.study_file import PRUNERS, SAMPLERS, parse_study

SPACE = {
    "patch_size": [4, 7],
    "num_blocks": {"low": 1, "high": 3, "step": 1},
    "optimizer": ["adam", "sgd"],
    "dropout": {"low": 0.0, "high": 0.4, "step": 0.1},
}


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("pruner", PRUNERS)
def test_samplers_and_pruners_drive_trials(sampler: str, pruner: str) -> None:
    config = parse_study({"study": {"name": "s", "sampler": sampler, "pruner": pruner},
                          "budget": {"max_epochs": 3}, "space": SPACE})
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=make_sampler(config),
                                pruner=make_pruner(config))
    for _ in range(4):
        trial = study.ask()
        params = TrialParams.from_dict(suggest(trial, config)[0])
        assert params.patch_size in (4, 7) and 1 <= params.num_blocks <= 3
        for epoch in range(1, 4):
            trial.report(params.num_blocks / 10 + epoch / 100, epoch)
            trial.should_prune()
        study.tell(trial, params.num_blocks / 10)
    assert len(study.trials) == 4


def test_worker_and_resume_seeds_differ() -> None:
    config = parse_study({"study": {"name": "s", "sampler": "random"}, "space": SPACE})

    def first_draw(worker: int, existing: int) -> dict:
        study = optuna.create_study(sampler=make_sampler(config, worker, existing))
        return suggest(study.ask(), config)[0]

    assert first_draw(0, 0) == first_draw(0, 0)  # reproducible
    assert first_draw(1, 0) != first_draw(0, 0)  # a second worker draws elsewhere
    assert first_draw(0, 5) != first_draw(0, 0)  # so does a resumed study


def _prunes_second_trial(pruner_options: dict) -> bool:
    """One complete trial at 0.9 per epoch, then a trial at 0.1: is it pruned at epoch 2?"""
    config = parse_study({"study": {"name": "s", "pruner": "median"},
                          "pruner": pruner_options, "budget": {"max_epochs": 3}})
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", pruner=make_pruner(config))
    good = study.ask()
    for epoch in range(1, 4):
        good.report(0.9, epoch)
    study.tell(good, 0.9)
    bad = study.ask()
    bad.report(0.1, 1)
    bad.report(0.1, 2)
    return bad.should_prune()


def test_median_startup_trials_sets_when_pruning_starts() -> None:
    assert not _prunes_second_trial({})  # default: 5 complete trials before any pruning
    assert _prunes_second_trial({"startup_trials": 1})


@pytest.mark.parametrize("pruner", ["successive-halving", "hyperband"])
def test_reduction_factor_reaches_the_pruner(pruner: str) -> None:
    config = parse_study({"study": {"name": "s", "pruner": pruner},
                          "pruner": {"reduction_factor": 5}, "budget": {"max_epochs": 25}})
    built = make_pruner(config)
    # Optuna keeps it private; hyperband hands it to each of its successive-halving brackets
    assert built._reduction_factor == 5
    default = make_pruner(parse_study({"study": {"name": "s", "pruner": pruner}}))
    assert default._reduction_factor == {"successive-halving": 4, "hyperband": 3}[pruner]
