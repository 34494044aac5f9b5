"""The search space as Optuna suggestions; samplers and pruners from their config names."""

from __future__ import annotations

import warnings
from typing import Any

import optuna
from optuna.exceptions import ExperimentalWarning

from hpsearch.search.pruning import RankingPrunedTPESampler, pruned_direction
from hpsearch.search.space_file import grid_values
from hpsearch.spec import Categorical, Dimension, StudyConfig


def suggest(trial: optuna.Trial, config: StudyConfig) -> tuple[dict[str, Any], list[str]]:
    """A trial's parameters, define-by-run: each searched parameter is asked of the sampler
    only where it acts (StudyConfig.resolve), so the sampler never sees an inactive one.
    Returns the parameters that act (sampled and fixed) and the names that were sampled."""
    sampled: list[str] = []

    def choose(name: str, dim: Dimension) -> Any:
        sampled.append(name)
        if isinstance(dim, Categorical):
            return trial.suggest_categorical(name, list(dim.choices))
        if dim.is_int:
            return trial.suggest_int(name, int(dim.low), int(dim.high), step=int(dim.step or 1),
                                     log=dim.log)
        return trial.suggest_float(name, dim.low, dim.high, step=dim.step, log=dim.log)
    return config.resolve(choose), sampled


def make_sampler(config: StudyConfig, worker_index: int = 0,
                 existing_trials: int = 0) -> optuna.samplers.BaseSampler:
    """Each worker gets its own seed: identical seeds would make parallel workers (or a resumed
    study) draw the same random start-up points. A fresh study's seeds depend only on the
    study seed and the worker index, so runs are reproducible."""
    seed = config.seed + worker_index + 1000 * existing_trials
    if config.sampler == "tpe":
        # constant_liar: a running trial counts as a bad result, so workers don't pile onto it.
        # group: with conditional parameters (momentum only for SGD) the trials do not all share
        # one space; grouped multivariate TPE models each set of parameters that occur together
        # on the trials where they did, where plain multivariate TPE falls back to sampling
        # every parameter independently as soon as the spaces differ
        options: dict[str, Any] = {"seed": seed, "multivariate": True, "group": True,
                                   "constant_liar": True}
        with warnings.catch_warnings(action="ignore", category=ExperimentalWarning):
            if config.multi_objective:  # its pruned trials ranked on the pruned objective
                return RankingPrunedTPESampler(pruned_direction(config), **options)
            return optuna.samplers.TPESampler(**options)
    seeded = {"nsga2": optuna.samplers.NSGAIISampler,  # the genetic multi-objective sampler
              "random": optuna.samplers.RandomSampler, "cmaes": optuna.samplers.CmaEsSampler}
    if config.sampler in seeded:
        return seeded[config.sampler](seed=seed)
    if config.sampler == "qmc":
        return optuna.samplers.QMCSampler(seed=config.seed)  # a QMC sequence is shared
    return optuna.samplers.GridSampler(grid_values(config), seed=config.seed)


def make_pruner(config: StudyConfig) -> optuna.pruners.BasePruner:
    options = config.pruner_options
    if config.rungs:
        # one intermediate value per rung end, at step reduction_factor**i (objective
        # `_train_rungs`): Optuna's rungs with min_resource 1 are exactly ours
        factor = options["reduction_factor"]
        if config.pruner == "successive-halving":
            return optuna.pruners.SuccessiveHalvingPruner(
                min_resource=1, reduction_factor=factor, min_early_stopping_rate=0)
        return optuna.pruners.HyperbandPruner(
            min_resource=1, max_resource=factor ** (len(config.rungs) - 1),
            reduction_factor=factor)
    if config.pruner == "none":
        return optuna.pruners.NopPruner()
    if config.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=options["startup_trials"],
                                           n_warmup_steps=config.min_epochs)
    if config.pruner == "successive-halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=config.min_epochs, reduction_factor=options["reduction_factor"])
    return optuna.pruners.HyperbandPruner(min_resource=config.min_epochs,
                                          max_resource=config.max_epochs,
                                          reduction_factor=options["reduction_factor"])
