"""Final evaluation: retrain one trial's configuration on train + validation, score it ONCE on
the test set, and store the result (table hps_evaluation).

A study only sees the validation split, and its best validation accuracy is optimistically
biased (the maximum over many trials and epochs). The honest number is this one: the trial
retrained from scratch on every training image (no [data] subset: that only makes the search
cheaper) up to its peak epoch, replaying the learning rate it had at every epoch (a plateau
schedule has no validation split to watch here; see `trainer.schedule`), then scored once on
the test set. A stored (trial, seed, epochs) result is reused, never retrained nor re-scored.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from hpsearch.db import evaluation_queries, queries, records
from hpsearch.db.engine import make_engine
from hpsearch.db.errors import DuplicateRowError
from hpsearch.db.migrate import ensure_schema, reading
from hpsearch.db.recorder import Recorder
from hpsearch.db.records import StoredEvaluation
from hpsearch.db.session import connection_scope
from hpsearch.errors import ConfigError, HpsearchError
from hpsearch.files import writable_folder
from hpsearch.metrics import EpochMetrics
from hpsearch.params import DataOptions, TrialParams
from hpsearch.paths import checkpoint_folder
from hpsearch.search.study import publish_test_accuracy
from hpsearch.trainer import data as data_mod
from hpsearch.trainer.data_sources import dataset_facts
from hpsearch.trainer.epochs_auto import AutoEpochs, choose_epochs
from hpsearch.trainer.schedule import LrCurve, replay_curve

if TYPE_CHECKING:
    from hpsearch.trainer.loop import Training

CURVE_KEYS = ("epoch", "train_loss", "train_acc", "lr", "seconds")
AUTO = "auto"  # --epochs auto
Epochs = int | str | None  # a count, AUTO, or None: the trial's own rule


@dataclass(frozen=True)
class Retraining:
    """How one trial is retrained on train + validation, fixed before it starts."""

    params: TrialParams  # the trial's full params, epochs = the retraining's epoch count
    lr_curve: LrCurve  # the learning rate of its every step: the searched run's, replayed
    auto: AutoEpochs | None = None  # how --epochs auto chose the length


@dataclass(frozen=True)
class EvaluationPlan:
    """What `run_evaluation` will do, resolved (and checked) before anything trains."""

    study: records.StudyInfo
    data: DataOptions  # the study's stored [data] table
    checkpoint_dir: str  # where the final weights go ([workers] checkpoint_dir)
    trial: records.TrialRecord
    retraining: Retraining
    seeds: tuple[int, ...]

    @property
    def params(self) -> TrialParams:
        return self.retraining.params

    @property
    def epochs(self) -> int:
        return self.params.epochs

    @property
    def auto(self) -> AutoEpochs | None:
        return self.retraining.auto


@dataclass(frozen=True)
class FinalResult(StoredEvaluation):
    """One retraining's result, as stored."""

    stored: bool = False  # True: found in the database from an earlier run, not retrained


def final_checkpoint_path(root: str | Path, study_name: str, number: int, seed: int) -> Path:
    """Where the final weights of one retraining go: CHECKPOINT_DIR/<study slug>/..."""
    # the slug (paths.study_slug) and the ints keep it inside the study's folder
    return (checkpoint_folder(root, study_name)
            / f"final-trial-{int(number)}-seed-{int(seed)}.pt").resolve()


def check_epochs(epochs: Epochs) -> None:
    """--epochs: a positive count, AUTO or None (the trial's own rule)."""
    if isinstance(epochs, str):
        if epochs != AUTO:
            raise ConfigError(f"--epochs must be a number or {AUTO!r}, got {epochs!r}")
    elif epochs is not None and epochs < 1:
        raise ConfigError(f"--epochs must be at least 1, got {epochs}")


def plan_evaluation(name: str, url: str | None = None, *, trial: int | None = None,
                    epochs: Epochs = None, seeds: int = 1, device: str = "auto",
                    on_epoch: Callable[[EpochMetrics], None] | None = None) -> EvaluationPlan:
    """Resolve the study, the trial (default: the best, by `queries.best_query`), its full
    params, the epoch count (default: the epoch where the first objective peaked; AUTO:
    chosen on a held-out slice, `on_epoch` following those runs) and the learning rate to
    replay. Never reads the test set."""
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    check_epochs(epochs)
    ensure_schema(url, create=False)  # evaluations are stored later
    with reading(url) as conn:
        study = queries.find_study(conn, name)
        record = queries.chosen_trial(conn, study, trial, "to evaluate")
        lrs = queries.trial_lrs(conn, study, record.number)
    retraining, data = plan_retraining(study, record, lrs, epochs, device=device,
                                       on_epoch=on_epoch)
    return EvaluationPlan(study, data, study.config.workers.checkpoint_dir, record, retraining,
                          evaluation_seeds(record, seeds))


def plan_retraining(study: records.StudyInfo, record: records.TrialRecord,
                    lrs: Sequence[float], epochs: Epochs, *, device: str = "auto",
                    on_epoch: Callable[[EpochMetrics], None] | None = None
                    ) -> tuple[Retraining, DataOptions]:
    """The trial's retraining and the study's [data] options: up to the epoch where the trial
    peaked (or `epochs` of them), replaying its recorded rates `lrs`; under an explicit length
    a cosine schedule stretches over it. AUTO is resolved by `epochs_auto.choose_epochs` (the
    runs train with the trial's seed, the first seed of the evaluation), and the retraining
    replays the rates of the run that chose the length."""
    params, data = retrain_params(study, record, None if epochs == AUTO else epochs)  # type: ignore[arg-type]
    if epochs == AUTO:
        auto = choose_epochs(params, data, split_seed=study.seed + 1, seed=record.seed,
                             device=device, on_epoch=on_epoch)
        params = params.replace(epochs=auto.epochs)
        return Retraining(params, replay_curve(params, auto.lrs), auto), data
    # the schedule's own span: the trial's (cut short at its peak) or the length asked for
    span = epochs or TrialParams.from_dict(record.params).epochs
    curve = replay_curve(params.replace(epochs=span), lrs)
    return Retraining(params.replace(epochs=epochs or record.best_epoch), curve), data  # type: ignore[arg-type]


def retrain_params(study: records.StudyInfo, record: records.TrialRecord,
                   epochs: int | None) -> tuple[TrialParams, DataOptions]:
    """A trial's full params (epochs: `epochs`, else those `hpsearch best --format toml` gives:
    the peak epoch, or the full length under cosine) and the study's stored [data] options,
    checked."""
    from hpsearch.search.retrain import retrain_config

    if record.state == "running":
        raise HpsearchError(f"trial {record.number} of study {study.name!r} is still running")
    if epochs is None and record.best_epoch is None:
        raise HpsearchError(f"trial {record.number} of study {study.name!r} finished no epoch; "
                            "pass --epochs to choose the retraining length")
    # the same params and epoch rule as `hpsearch best --format toml`: the trial row's
    # params, at the peak epoch except that a cosine schedule keeps its full length
    resolved, data = retrain_config(study, record)
    params = TrialParams.from_dict({**resolved, "epochs": epochs or resolved["epochs"]})
    params.check_image(data.dataset, dataset_facts(data).shape)
    return params, data


def check_weights_folder(checkpoint_dir: str, study_name: str) -> None:
    """Before the first retraining: weights that cannot be saved would be lost after it. Not
    asked where every result is stored already (a read-only copy of finished results still
    shows them)."""
    writable_folder(checkpoint_folder(checkpoint_dir, study_name), "final weights")


def evaluation_seeds(trial: records.TrialRecord, seeds: int) -> tuple[int, ...]:
    """The seed the trial trained with in the search, then the next ones."""
    return tuple(trial.seed + k for k in range(seeds))


def _stored(engine: Engine, plan: EvaluationPlan) -> dict[int, FinalResult]:
    with connection_scope(engine) as conn:
        rows = evaluation_queries.stored_evaluations(conn, plan.trial.id, plan.epochs,
                                                    plan.seeds)
    return {seed: FinalResult(r.seed, r.epochs, r.test_acc, r.test_loss, r.seconds,
                              r.checkpoint_path, stored=True) for seed, r in rows.items()}


def run_evaluation(plan: EvaluationPlan, url: str | None = None, *, device: str = "auto",
                   on_epoch: Callable[[int, EpochMetrics], None] | None = None,
                   on_result: Callable[[FinalResult], None] | None = None) -> list[FinalResult]:
    """Retrain once per seed of the plan (reusing stored results), score each final model once
    on the test set, store each result as it comes. `on_epoch(seed, metrics)` follows the
    retraining; its val_loss/val_acc are nan (there is no validation split)."""
    from hpsearch.trainer.loop import evaluate as score
    from hpsearch.trainer.runtime import resolve_device

    dev = resolve_device(device)
    engine = make_engine(url)  # this command's one engine, for every read and write
    try:
        stored = _stored(engine, plan)
        results: list[FinalResult] = []
        options = plan.data
        data: data_mod.TrainValData | None = None
        for seed in plan.seeds:
            if seed in stored:
                results.append(stored[seed])
                if on_result is not None:
                    on_result(stored[seed])
                continue
            if data is None:  # loaded once, and only when something needs training
                check_weights_folder(plan.checkpoint_dir, plan.study.name)
                data = data_mod.load_full_train(options)
            started = time.perf_counter()
            trained = retrain(plan.params, data, seed, device, plan.retraining.lr_curve,
                              partial(on_epoch, seed) if on_epoch else None,
                              f"retraining trial {plan.trial.number} with seed {seed}")
            # the one look at the test set, after training is over, in the training's precision
            test = data_mod.load_test_split(options, data.mean, data.std)
            test_loss, test_acc = score(trained.model, test, dev, trained.setup.autocast_dtype)
            path = final_checkpoint_path(plan.checkpoint_dir, plan.study.name,
                                         plan.trial.number, seed)
            curve = save_final(trained, path)
            result = FinalResult(seed, plan.epochs, test_acc, test_loss,
                                 time.perf_counter() - started, str(path))
            store_final(engine, plan.trial, result.seed, result.epochs, result.test_acc,
                        result.test_loss, curve, result.checkpoint_path, result.seconds)
            results.append(result)
            if on_result is not None:
                on_result(result)
        publish_test_accuracy(engine, plan.study.optuna_study_id, plan.trial.number,
                              summarise(plan, results).to_dict())
        return results
    finally:
        engine.dispose()


def retrain(params: TrialParams, data: data_mod.TrainValData, seed: int, device: str,
            lr_curve: LrCurve, on_epoch: Callable[[EpochMetrics], None] | None,
            what: str) -> Training:
    """`params` trained to their end on `data`; a divergence is an HpsearchError naming
    `what` (e.g. "retraining trial 3 with seed 0")."""
    from hpsearch.trainer.loop import TrainingDiverged, fit

    try:
        trained = fit(params, data, seed=seed, device=device, lr_curve=lr_curve)
        for metrics in trained:
            if on_epoch is not None:
                on_epoch(metrics)
    except TrainingDiverged as exc:
        raise HpsearchError(f"{what} diverged: {exc}") from None
    return trained


def save_final(trained: Training, path: Path) -> list[dict]:
    """Save a retraining's final weights to `path`; its curve, as hps_evaluation stores it."""
    from hpsearch.trainer.checkpoint import save_checkpoint

    save_checkpoint(path, {k: v.detach().cpu() for k, v in trained.model.state_dict().items()})
    return [{k: m.to_dict()[k] for k in CURVE_KEYS} for m in trained.history]


def store_final(engine: Engine, trial: records.TrialRecord, seed: int, epochs: int,
                acc: float, loss: float, curve: list[dict], path: str, seconds: float) -> None:
    try:
        Recorder(engine).store_evaluation(trial.id, seed, epochs, acc, loss, curve, path,
                                          seconds)
    except DuplicateRowError:
        raise HpsearchError(f"trial {trial.number} was evaluated with seed {seed} and {epochs} "
                            "epochs by another process meanwhile; run again to see it") from None


def summarise(plan: EvaluationPlan, results: list[FinalResult]) -> records.EvaluationSummary:
    """Mean ± std over the seeds (the same summary the query commands show)."""
    return records.EvaluationSummary(plan.trial.number, plan.epochs,
                                     tuple(r.test_acc for r in results))
