"""Pruning on one objective, in a study of one objective or several (optuna#3450).

Optuna's `Trial.report` and its pruners take a study of one objective: a multi-objective study
refuses `report`, and its `direction`, which every pruner reads. Every epoch holds every
measure, so a study of several objectives is pruned on one of them (the first, or `[pruner]
objective`), through a view of the study on that objective: the same study in the same
storage, whose storage answers with that objective's direction alone. The trial is reported
and asked through `optuna.Trial(view, trial_id)`, the same two calls as in a study of one
objective, so its values are the trial's intermediate values in Optuna's tables (which
optuna-dashboard draws) and Optuna's own pruners decide, Hyperband's brackets included (a
bracket is a study made from the view's storage).

TPE ranks pruned trials by their last intermediate value in the study's `direction`, which a
multi-objective study refuses (Optuna 5.1 raises as soon as such a trial exists):
`RankingPrunedTPESampler` hands it the study with the pruned objective's direction.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.study import StudyDirection

from hpsearch.spec import StudyConfig


class _Overridden:
    """`target` as it is, but for the attributes given (a study's storage, or a study)."""

    def __init__(self, target: Any, **attrs: Any) -> None:
        self._target = target
        self.__dict__.update(attrs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


def pruned_direction(config: StudyConfig) -> StudyDirection:
    """The pruned objective's direction, as Optuna spells it."""
    return StudyDirection.MAXIMIZE if config.pruned.maximize else StudyDirection.MINIMIZE


class PruningView:
    """The trials of one study as its pruner sees them: each trial reported on the pruned
    objective. Made once per worker (the view caches the finished trials, as the study does)."""

    def __init__(self, config: StudyConfig) -> None:
        self.config = config
        self._view: optuna.Study | None = None

    def trial(self, trial: optuna.Trial) -> optuna.Trial:
        """Whom to report to and ask: the trial itself in a study of one objective; in one of
        several, the same trial in the view of its study on the pruned objective."""
        if not self.config.multi_objective:
            return trial
        if self._view is None:
            study = trial.study
            # the storage answers with the pruned objective's direction alone
            direction = pruned_direction(self.config)
            storage = _Overridden(study._storage,
                                  get_study_directions=lambda _study_id: [direction])
            # the sampler is asked nothing (a Trial tells it before_trial, a no-op in Random)
            self._view = optuna.Study(study.study_name, storage,
                                      sampler=optuna.samplers.RandomSampler(),
                                      pruner=study.pruner)
        return optuna.Trial(self._view, trial._trial_id)


class RankingPrunedTPESampler(optuna.samplers.TPESampler):
    """Optuna's TPE for a multi-objective study: complete trials are ranked on every objective
    as TPE does; pruned ones on their last reported value of the pruned objective, as TPE does
    in a study of one objective."""

    def __init__(self, pruned: StudyDirection, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._pruned = pruned

    def sample_relative(self, study: optuna.Study, trial: optuna.trial.FrozenTrial,
                        search_space: dict[str, Any]) -> dict[str, Any]:
        return super().sample_relative(_Overridden(study, direction=self._pruned), trial,
                                       search_space)

    def sample_independent(self, study: optuna.Study, trial: optuna.trial.FrozenTrial,
                           param_name: str, param_distribution: Any) -> Any:
        return super().sample_independent(_Overridden(study, direction=self._pruned), trial,
                                          param_name, param_distribution)
