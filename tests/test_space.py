"""Every sampler and pruner named in a study file builds and drives real Optuna trials."""

from __future__ import annotations

import optuna
import pytest

from hpsearch.config import PRUNERS, SAMPLERS, parse_study
from hpsearch.space import make_pruner, make_sampler, suggest

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
        params = config.params_for(suggest(trial, config.space))
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
        return suggest(study.ask(), config.space)

    assert first_draw(0, 0) == first_draw(0, 0)  # reproducible
    assert first_draw(1, 0) != first_draw(0, 0)  # a second worker draws elsewhere
    assert first_draw(0, 5) != first_draw(0, 0)  # so does a resumed study
