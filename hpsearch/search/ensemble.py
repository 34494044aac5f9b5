"""Ensembles of a study's best trials (`hpsearch evaluate --ensemble K`): more accuracy from the
trials a search already ran.

Two phases, so that the test set cannot influence any choice:
1. `plan_ensemble` fixes the K best trials (`queries.top_trials`), each one's retraining length
   and the members' weights: equal ("top"), or Caruana's greedy selection with replacement
   ("greedy") on validation predictions of candidates retrained on the study's train split.
2. `run_ensemble`, per seed: every member, and the single best trial it is compared with, is
   retrained as `hpsearch evaluate` does (or its stored weights reloaded); then the test set is
   read once: each member's score is an hps_evaluation row, the weighted mean of the members'
   softmax outputs the ensemble's (hps_ensemble); `tta="flip"` adds mirrored test images.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
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
from hpsearch.db.session import connection_scope
from hpsearch.errors import CheckpointError, ConfigError, HpsearchError
from hpsearch.metrics import EpochMetrics
from hpsearch.params import DataOptions, TrialParams
from hpsearch.search.evaluate import (
    AUTO,
    Epochs,
    Retraining,
    check_epochs,
    check_weights_folder,
    evaluation_seeds,
    final_checkpoint_path,
    plan_retraining,
    retrain,
    retrain_params,
    save_final,
    store_final,
)
from hpsearch.trainer import data as data_mod
from hpsearch.trainer.ensemble_select import average, greedy_weights, score_probs
from hpsearch.trainer.epochs_auto import AutoEpochs

if TYPE_CHECKING:
    import torch
    from torch import nn

SELECTIONS = ("top", "greedy")
TTA_MODES = ("flip",)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Member:
    trial: records.TrialRecord
    retraining: Retraining  # its params (epochs: its retraining length) and learning rate
    weight: float  # its share of the averaged outputs; 0 for a baseline greedy left out

    @property
    def params(self) -> TrialParams:
        return self.retraining.params

    @property
    def auto(self) -> AutoEpochs | None:
        return self.retraining.auto

    def to_dict(self) -> dict[str, float | int]:
        return {"trial": self.trial.number, "epochs": self.params.epochs,
                "weight": round(self.weight, 6)}


@dataclass(frozen=True)
class EnsemblePlan:
    """Every choice of an ensemble evaluation, fixed before the test set is read."""

    study: records.StudyInfo
    data: DataOptions
    checkpoint_dir: str
    selection: str  # one of SELECTIONS
    candidates: int  # K: how many of the best trials were considered
    members: tuple[Member, ...]  # weight > 0, in rank order
    baseline: Member  # the single best trial (the comparison), a member or not
    seeds: tuple[int, ...]  # the baseline's evaluation seeds; a member's k-th is its own
    tta: str | None = None
    # greedy only: validation accuracy of the ensemble and of each candidate, for the record
    val_acc: float | None = None

    @property
    def retrained(self) -> tuple[Member, ...]:
        """What each seed retrains: the members, and the baseline if it is not one."""
        if any(m.trial.number == self.baseline.trial.number for m in self.members):
            return self.members
        return (self.baseline, *self.members)

    @property
    def members_key(self) -> str:
        """The members, their lengths and weights and the test-time augmentation, as one
        string: two runs with the same key are the same ensemble."""
        key = ",".join(f"{m.trial.number}:{m.params.epochs}:{m.weight:.6f}"
                       for m in self.members)
        return f"{self.selection}/{key}" + (f"/tta={self.tta}" if self.tta else "")


@dataclass(frozen=True)
class MemberResult:
    trial_number: int
    seed: int
    test_acc: float
    stored: bool  # found in the database, not retrained now


@dataclass(frozen=True)
class EnsembleResult:
    seed: int
    test_acc: float
    test_loss: float
    seconds: float
    baseline_acc: float | None = None  # the single best trial's, same seed and length
    members: tuple[MemberResult, ...] = ()  # empty when the whole result was stored earlier
    test_acc_tta: float | None = None
    test_loss_tta: float | None = None
    stored: bool = False


def plan_ensemble(name: str, url: str | None = None, *, k: int, selection: str = "top",
                  epochs: Epochs = None, seeds: int = 1, tta: str | None = None,
                  device: str = "auto",
                  on_epoch: Callable[[int, EpochMetrics], None] | None = None) -> EnsemblePlan:
    """Choose the members and their weights; never reads the test set. Greedy selection
    retrains each candidate on the study's train split (`on_epoch(trial number, metrics)`
    follows those runs)."""
    if k < 2:
        raise ConfigError(f"--ensemble needs at least 2 trials, got {k}")
    if selection not in SELECTIONS:
        raise ConfigError(f"unknown selection {selection!r} (choose from: "
                          f"{', '.join(SELECTIONS)})")
    if tta is not None and tta not in TTA_MODES:
        raise ConfigError(f"unknown --tta {tta!r} (choose from: {', '.join(TTA_MODES)})")
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    check_epochs(epochs)
    ensure_schema(url, create=False)  # evaluations are stored later
    with reading(url) as conn:
        study = queries.find_study(conn, name)
        top = queries.top_trials(conn, study, k)
        lrs = [queries.trial_lrs(conn, study, record.number) for record in top]
    if len(top) < 2:
        raise HpsearchError(f"study {name!r} has {len(top)} complete trial(s); an ensemble "
                            "needs at least 2")
    # checked for every candidate before any training starts
    for record in top:
        retrain_params(study, record, None if epochs == AUTO else epochs)  # type: ignore[arg-type]
    resolved = [plan_retraining(study, record, rates, epochs, device=device,
                                on_epoch=(lambda m, n=record.number: on_epoch(n, m))
                                if on_epoch else None)
                for record, rates in zip(top, lrs, strict=True)]
    data = resolved[0][1]
    weights = [1 / len(top)] * len(top)
    val_acc = None
    if selection == "greedy":
        weights, val_acc = _greedy(study, data, top, [r for r, _ in resolved], device,
                                   on_epoch)
    candidates = [Member(record, retraining, w)
                  for record, (retraining, _), w in zip(top, resolved, weights, strict=True)]
    return EnsemblePlan(study, data, study.config.workers.checkpoint_dir, selection, len(top),
                        tuple(m for m in candidates if m.weight > 0), candidates[0],
                        evaluation_seeds(top[0], seeds), tta, val_acc)


def _greedy(study: records.StudyInfo, options: DataOptions, top: list[records.TrialRecord],
            retrainings: list[Retraining], device: str,
            on_epoch: Callable[[int, EpochMetrics], None] | None
            ) -> tuple[list[float], float]:
    """Greedy weights from validation predictions: each candidate retrained on the study's own
    train split (its subset and split seed) with the seed it trained with in the search."""
    from hpsearch.trainer.loop import predict_probs

    data = data_mod.load_train_val(options, study.seed)
    dev = _device(device)
    probs = []
    for record, retraining in zip(top, retrainings, strict=True):
        trained = retrain(retraining.params, data, record.seed, str(dev), retraining.lr_curve,
                          partial(on_epoch, record.number) if on_epoch else None,
                          f"retraining trial {record.number} for ensemble selection")
        probs.append(predict_probs(trained.model, data.val, dev, trained.setup.autocast_dtype))
    weights = greedy_weights(probs, data.val.labels)
    _, acc = score_probs(average(probs, weights), data.val.labels)
    return weights, acc


def _device(device: str) -> torch.device:
    from hpsearch.trainer.runtime import resolve_device

    try:
        return resolve_device(device)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def run_ensemble(plan: EnsemblePlan, url: str | None = None, *, device: str = "auto",
                 on_epoch: Callable[[int, int, EpochMetrics], None] | None = None,
                 on_result: Callable[[EnsembleResult], None] | None = None
                 ) -> list[EnsembleResult]:
    """Retrain and score the plan once per seed (results stored earlier are reused), storing
    each member's and the ensemble's result as it comes. `on_epoch(seed, trial number,
    metrics)` follows the retrainings."""
    dev = _device(device)
    engine = make_engine(url)  # this command's one engine, for every read and write
    try:
        with connection_scope(engine) as conn:
            done = evaluation_queries.stored_ensembles(conn, plan.study, plan.members_key,
                                                      plan.seeds)
            stored = {m.trial.number: evaluation_queries.stored_evaluations(
                conn, m.trial.id, m.params.epochs, evaluation_seeds(m.trial, len(plan.seeds)))
                for m in plan.retrained}
        results = []
        full: data_mod.TrainValData | None = None
        for k, seed in enumerate(plan.seeds):
            if seed in done:
                row = done[seed]
                baseline = stored[plan.baseline.trial.number].get(seed)
                result = EnsembleResult(seed, row.test_acc, row.test_loss, row.seconds,
                                        baseline.test_acc if baseline else None,
                                        test_acc_tta=row.test_acc_tta,
                                        test_loss_tta=row.test_loss_tta, stored=True)
            else:
                if full is None:  # loaded once, and only when something needs scoring
                    check_weights_folder(plan.checkpoint_dir, plan.study.name)
                    full = data_mod.load_full_train(plan.data)
                result = _one_seed(plan, engine, full, k, dev, stored, on_epoch)
            results.append(result)
            if on_result is not None:
                on_result(result)
        return results
    finally:
        engine.dispose()


def _one_seed(plan: EnsemblePlan, engine: Engine, full: data_mod.TrainValData, k: int,
              dev: torch.device, stored: dict[int, dict[int, records.StoredEvaluation]],
              on_epoch: Callable[[int, int, EpochMetrics], None] | None) -> EnsembleResult:
    """The k-th seed: each member retrains with its own k-th evaluation seed."""
    from hpsearch.trainer.loop import predict_probs

    models = {}  # trial number -> (model, autocast dtype, curve or None when stored)
    seconds = 0.0
    for member in plan.retrained:
        seed = member.trial.seed + k
        earlier = stored[member.trial.number].get(seed)
        model, dtype, curve, took = _member_model(plan, member, full, seed, dev, earlier,
                                                  on_epoch)
        models[member.trial.number] = (model, dtype, curve, took)
        seconds += took
    # the one look at the test set for this seed: every choice was fixed by the plan
    test = data_mod.load_test_split(plan.data, full.mean, full.std)
    tested = time.perf_counter()
    probs, flipped, members = {}, {}, []
    for member in plan.retrained:
        number = member.trial.number
        model, dtype, curve, took = models[number]
        probs[number] = predict_probs(model, test, dev, dtype)
        if plan.tta:
            flipped[number] = predict_probs(model, test, dev, dtype, flip=True)
        loss, acc = score_probs(probs[number], test.labels)
        seed = member.trial.seed + k
        if curve is not None:  # retrained now: its own result is an ordinary evaluation
            path = final_checkpoint_path(plan.checkpoint_dir, plan.study.name, number, seed)
            store_final(engine, member.trial, seed, member.params.epochs, acc, loss, curve,
                        str(path), took)
        members.append(MemberResult(number, seed, acc, stored=curve is None))
    weights = [m.weight for m in plan.members]
    loss, acc = score_probs(average([probs[m.trial.number] for m in plan.members], weights),
                            test.labels)
    loss_tta = acc_tta = None
    if plan.tta:
        loss_tta, acc_tta = score_probs(
            average([flipped[m.trial.number] for m in plan.members], weights), test.labels)
    seconds += time.perf_counter() - tested
    baseline = next(m.test_acc for m in members if m.trial_number == plan.baseline.trial.number)
    result = EnsembleResult(plan.seeds[k], acc, loss, seconds, baseline, tuple(members), acc_tta,
                            loss_tta)
    _store_ensemble(engine, plan, result)
    return result


def _member_model(plan: EnsemblePlan, member: Member, full: data_mod.TrainValData, seed: int,
                  dev: torch.device, earlier: records.StoredEvaluation | None,
                  on_epoch: Callable[[int, int, EpochMetrics], None] | None
                  ) -> tuple[nn.Module, torch.dtype | None, list[dict] | None, float]:
    """(model, autocast dtype, curve, seconds): the stored weights of an earlier retraining
    with this seed and length where they are still on disk (curve None: nothing to store),
    else a retraining on train + validation saved like `hpsearch evaluate`'s."""
    from hpsearch.trainer.checkpoint import load_checkpoint, load_weights
    from hpsearch.trainer.model import build_model
    from hpsearch.trainer.runtime import resolve_precision

    number = member.trial.number
    if earlier is not None:
        # a missing, corrupt or mismatched file alike: the member is retrained, as said here
        path = Path(earlier.checkpoint_path)
        try:
            model = build_model(member.params, full.image_shape, full.num_classes)
            load_weights(model, load_checkpoint(path), path)
        except CheckpointError as exc:
            log.warning("trial %d's final weights cannot be used (%s): retrained", number, exc)
        else:
            dtype = resolve_precision(member.params.precision, dev).autocast_dtype
            return model.to(dev), dtype, None, earlier.seconds
    started = time.perf_counter()
    trained = retrain(member.params, full, seed, str(dev), member.retraining.lr_curve,
                      partial(on_epoch, seed, number) if on_epoch else None,
                      f"retraining trial {number} with seed {seed}")
    curve = save_final(trained, final_checkpoint_path(plan.checkpoint_dir, plan.study.name,
                                                      number, seed))
    # stored, but its weights were gone: retrained, not stored again
    return (trained.model, trained.setup.autocast_dtype, curve if earlier is None else None,
            time.perf_counter() - started)


def _store_ensemble(engine: Engine, plan: EnsemblePlan, result: EnsembleResult) -> None:
    try:
        Recorder(engine).store_ensemble({
            "study_id": plan.study.id, "seed": result.seed, "selection": plan.selection,
            "members": [m.to_dict() for m in plan.members], "members_key": plan.members_key,
            "test_acc": result.test_acc, "test_loss": result.test_loss, "tta": plan.tta,
            "test_acc_tta": result.test_acc_tta, "test_loss_tta": result.test_loss_tta,
            "seconds": result.seconds})
    except DuplicateRowError:
        raise HpsearchError(f"this ensemble was evaluated with seed {result.seed} by another "
                            "process meanwhile; run again to see it") from None
