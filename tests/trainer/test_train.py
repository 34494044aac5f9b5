"""The trainer: optimisers, schedules, divergence, reproducibility, checkpoints. Synthetic data
and a tiny model only, so the whole file runs in seconds."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from hpsearch.errors import CheckpointError
from hpsearch.metrics import EpochMetrics
from hpsearch.params import DataOptions, TrialParams
from hpsearch.trainer.checkpoint import load_checkpoint, load_weights, save_checkpoint
from hpsearch.trainer.data import Split, TrainValData, load_train_val
from hpsearch.trainer.loop import (
    CHANCE_PATIENCE,
    TrainingDiverged,
    _check_chance,
    evaluate,
    fit,
    make_optimizer,
)
from hpsearch.trainer.model import build_model
from hpsearch.trainer.runtime import configure_threads, resolve_device, tune_malloc
from hpsearch.trainer.schedule import Schedule, replay_curve

TINY = {"patch_size": 7, "hidden_dim": 32, "token_mlp_dim": 16, "channel_mlp_dim": 64,
        "batch_size": 64}


def tiny(**changes: object) -> TrialParams:
    return TrialParams(**TINY).replace(**changes)


@pytest.fixture(scope="module")
def data() -> TrainValData:
    return load_train_val(DataOptions(dataset="synthetic", synthetic_size=600), seed=0)


def _same_metrics(a: EpochMetrics, b: EpochMetrics, tol: float = 0.0) -> None:
    for name in ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr"):
        assert getattr(a, name) == pytest.approx(getattr(b, name), abs=tol), name


# --------------------------------------------------------------------------------------------
# optimisers and schedules
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("optimizer", "lr"), [("sgd", 0.05), ("adam", 3e-3), ("adamw", 3e-3),
                                               ("radam", 3e-2)])
def test_each_optimiser_lowers_the_loss(data: TrainValData, optimizer: str, lr: float) -> None:
    momentum = {"momentum": 0.9, "nesterov": True} if optimizer == "sgd" else {}
    params = tiny(optimizer=optimizer, lr=lr, weight_decay=1e-4, **momentum)
    torch.manual_seed(0)
    model = build_model(params, data.image_shape)
    opt = make_optimizer(params, model)
    images, labels = data.train.images[:128], data.train.labels[:128]

    def loss() -> torch.Tensor:
        return nn.functional.cross_entropy(model(images), labels)

    with torch.no_grad():
        before = loss().item()
    for _ in range(20):
        opt.zero_grad()
        loss().backward()
        opt.step()
    with torch.no_grad():
        after = loss().item()
    assert after < 0.8 * before, (before, after)
    assert type(opt).__name__.lower() == optimizer
    # the single-kernel implementations where torch has them (not for RAdam)
    assert opt.defaults.get("fused") is (True if optimizer != "radam" else None)


@pytest.mark.parametrize("scheduler", ["none", "cosine", "plateau", "step"])
def test_each_scheduler_trains(data: TrainValData, scheduler: str) -> None:
    params = tiny(scheduler=scheduler, warmup_epochs=1, step_size=1, gamma=0.5, epochs=3)
    history = fit(params, data, seed=0, device="cpu").run_to_end().history
    assert [m.epoch for m in history] == [1, 2, 3]
    assert history[-1].train_loss < history[0].train_loss
    assert history[-1].val_acc > 0.3


def _lrs(params: TrialParams, steps_per_epoch: int, val_losses: list[float] | None = None,
         val_accs: list[float] | None = None) -> list[float]:
    """Learning rate of every batch, driving Schedule as the trainer does."""
    model = nn.Linear(2, 2)
    opt = make_optimizer(params, model)
    schedule = Schedule(params, opt, steps_per_epoch)
    seen = []
    for epoch in range(params.epochs):
        for step in range(steps_per_epoch):
            seen.append(schedule.before_step(epoch + 1, step))
            opt.step()
        schedule.after_epoch(val_losses[epoch] if val_losses else 1.0,
                             val_accs[epoch] if val_accs else 0.5)
    return seen


def test_cosine_with_warmup_rises_then_decays() -> None:
    lr = 0.1
    seen = _lrs(tiny(lr=lr, scheduler="cosine", warmup_epochs=2, epochs=10), steps_per_epoch=5)
    warmup, decay = seen[:10], seen[10:]
    assert warmup == pytest.approx([lr * i / 10 for i in range(10)])  # from 0, as in HF's
    assert all(a < b for a, b in zip(warmup, warmup[1:], strict=False))
    assert decay[0] == pytest.approx(lr)
    assert all(a > b for a, b in zip(decay, decay[1:], strict=False))
    assert decay[-1] < 0.01 * lr
    middle = decay[len(decay) // 2]  # half way through the decay: half the peak
    assert middle == pytest.approx(lr / 2, rel=0.05)


def test_cosine_without_warmup_starts_at_the_peak() -> None:
    seen = _lrs(tiny(lr=0.1, scheduler="cosine", warmup_epochs=0, epochs=4), steps_per_epoch=3)
    assert seen[0] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(seen, seen[1:], strict=False))


def test_step_decays_by_gamma_every_step_size_epochs() -> None:
    seen = _lrs(tiny(lr=0.1, scheduler="step", step_size=2, gamma=0.5, epochs=6),
                steps_per_epoch=3)
    per_epoch = seen[::3]
    assert per_epoch == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025])
    assert seen[:3] == pytest.approx([0.1] * 3)  # constant within an epoch


def test_plateau_decays_after_patience() -> None:
    flat = _lrs(tiny(lr=0.1, scheduler="plateau", gamma=0.5, plateau_patience=2, epochs=6),
                steps_per_epoch=1, val_losses=[1.0] * 6)
    # best at epoch 1; epochs 2, 3, 4 are no better; more than patience (2) → decay after 4
    assert flat == pytest.approx([0.1, 0.1, 0.1, 0.1, 0.05, 0.05])
    improving = _lrs(tiny(lr=0.1, scheduler="plateau", gamma=0.5, epochs=6), steps_per_epoch=1,
                     val_losses=[1.0, 0.9, 0.8, 0.7, 0.6, 0.5])
    assert improving == pytest.approx([0.1] * 6)


def test_plateau_default_patience_is_pytorchs_ten() -> None:
    # 11 bad epochs (2..12) after the best (1) before the first cut: the lr of epoch 13 is cut
    seen = _lrs(tiny(lr=0.1, scheduler="plateau", gamma=0.5, epochs=14), steps_per_epoch=1,
                val_losses=[1.0] * 14)
    assert seen == pytest.approx([0.1] * 12 + [0.05] * 2)


def test_plateau_threshold_decides_what_counts_as_better() -> None:
    # the loss falls by a relative 1e-5 each epoch: below the default threshold (1e-4), so the
    # lr is cut as if it were flat; with threshold 0 every epoch is an improvement
    creeping = [1.0 * (1 - 1e-5) ** i for i in range(5)]
    base = tiny(lr=0.1, scheduler="plateau", gamma=0.5, plateau_patience=1, epochs=5)
    assert _lrs(base, 1, creeping) == pytest.approx([0.1, 0.1, 0.1, 0.05, 0.05])
    assert _lrs(base.replace(plateau_threshold=0.0), 1, creeping) == pytest.approx([0.1] * 5)


def test_plateau_cooldown_and_min_lr() -> None:
    flat = [1.0] * 7
    every = _lrs(tiny(lr=0.1, scheduler="plateau", gamma=0.5, plateau_patience=0, epochs=7),
                 1, flat)
    # patience 0: every epoch after the first (the best so far) is a bad one and is cut
    assert every == pytest.approx([0.1, 0.1, 0.05, 0.025, 0.0125, 0.00625, 0.003125])
    # cooldown 2: after a cut, two epochs pass before bad epochs count again
    cooled = _lrs(tiny(lr=0.1, scheduler="plateau", gamma=0.5, plateau_patience=0,
                       plateau_cooldown=2, epochs=7), 1, flat)
    assert cooled == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025])
    floored = _lrs(tiny(lr=0.1, scheduler="plateau", gamma=0.5, plateau_patience=0,
                        min_lr=0.03, epochs=5), 1, flat)
    assert floored == pytest.approx([0.1, 0.1, 0.05, 0.03, 0.03])


def test_plateau_watches_the_chosen_metric() -> None:
    # flat loss, rising accuracy: watching the loss cuts, watching the accuracy (mode max) not
    losses, accs = [1.0] * 4, [0.5, 0.6, 0.7, 0.8]
    base = tiny(lr=0.1, scheduler="plateau", gamma=0.5, plateau_patience=1, epochs=4)
    assert _lrs(base, 1, losses, accs) == pytest.approx([0.1, 0.1, 0.1, 0.05])
    by_acc = base.replace(plateau_metric="val_acc")
    assert _lrs(by_acc, 1, losses, accs) == pytest.approx([0.1] * 4)
    assert _lrs(by_acc.replace(plateau_mode="max"), 1, losses, accs) == pytest.approx([0.1] * 4)
    # falling accuracy under val_acc is what gets cut
    assert _lrs(by_acc, 1, losses, accs[::-1]) == pytest.approx([0.1, 0.1, 0.1, 0.05])


def test_plateau_without_validation_replays_a_curve(data: TrainValData) -> None:
    # no validation split (a final retraining): nothing to watch, so the rate is replayed
    full = TrainValData(train=data.train, val=Split(data.val.images[:0], data.val.labels[:0]),
                        dataset=data.dataset, mean=data.mean, std=data.std)
    params = tiny(lr=0.01, scheduler="plateau", gamma=0.5, plateau_patience=0, epochs=3)
    with pytest.raises(ValueError, match="lr_curve"):
        fit(params, full, seed=0, device="cpu")
    recorded = [0.01, 0.001, 0.0001]
    history = fit(params, full, seed=0, device="cpu",
                  lr_curve=replay_curve(params, recorded)).run_to_end().history
    assert [m.lr for m in history] == pytest.approx(recorded)


def test_cosine_decays_to_min_lr() -> None:
    lr, floor = 0.1, 0.02
    seen = _lrs(tiny(lr=lr, scheduler="cosine", min_lr=floor, epochs=10), steps_per_epoch=5)
    assert seen[0] == pytest.approx(lr)
    assert seen[len(seen) // 2] == pytest.approx((lr + floor) / 2, rel=0.05)
    assert floor < seen[-1] < floor + 0.01 * lr
    assert min(seen) >= floor


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "radam"])
def test_betas_and_eps_reach_the_optimizer(optimizer: str) -> None:
    opt = make_optimizer(tiny(optimizer=optimizer, beta1=0.8, beta2=0.95, eps=1e-6),
                         nn.Linear(2, 2))
    group = opt.param_groups[0]
    assert (group["betas"], group["eps"]) == ((0.8, 0.95), 1e-6)
    default = make_optimizer(tiny(optimizer=optimizer), nn.Linear(2, 2)).param_groups[0]
    assert (default["betas"], default["eps"]) == ((0.9, 0.999), 1e-8)  # PyTorch's defaults


def test_momentum_and_nesterov_reach_sgd() -> None:
    group = make_optimizer(tiny(optimizer="sgd", momentum=0.8, nesterov=True),
                           nn.Linear(2, 2)).param_groups[0]
    assert (group["momentum"], group["nesterov"]) == (0.8, True)
    group = make_optimizer(tiny(optimizer="sgd", momentum=0.8), nn.Linear(2, 2)).param_groups[0]
    assert (group["momentum"], group["nesterov"]) == (0.8, False)
    plain = make_optimizer(tiny(optimizer="sgd"), nn.Linear(2, 2)).param_groups[0]
    assert (plain["momentum"], plain["nesterov"]) == (0.0, False)  # PyTorch's defaults


def test_no_scheduler_keeps_lr() -> None:
    assert _lrs(tiny(lr=0.02, scheduler="none", epochs=3), steps_per_epoch=4) == [0.02] * 12


def test_trainer_reports_the_scheduled_lr(data: TrainValData) -> None:
    params = tiny(lr=0.01, scheduler="step", step_size=1, gamma=0.5, epochs=3)
    history = fit(params, data, seed=0, device="cpu").run_to_end().history
    assert [m.lr for m in history] == pytest.approx([0.01, 0.005, 0.0025])


# --------------------------------------------------------------------------------------------
# divergence
# --------------------------------------------------------------------------------------------

def test_huge_lr_diverges_with_non_finite_loss(data: TrainValData) -> None:
    seen: list[EpochMetrics] = []
    with pytest.raises(TrainingDiverged, match="non-finite"):
        for metrics in fit(tiny(optimizer="sgd", lr=1e6, epochs=5, precision="fp32"), data,
                           seed=0, device="cpu"):
            seen.append(metrics)
    assert seen == []  # stopped in the first epoch


def test_model_stuck_at_chance_is_stopped_after_patience() -> None:
    # identical (blank) images and balanced labels: nothing to learn, accuracy exactly 1/10
    def blank(n: int) -> Split:
        return Split(torch.zeros(n, 1, 28, 28), torch.arange(n) % 10)

    stuck = TrainValData(train=blank(200), val=blank(50), dataset="synthetic", mean=0.0, std=1.0)
    seen: list[EpochMetrics] = []
    with pytest.raises(TrainingDiverged, match="chance"):
        for metrics in fit(tiny(lr=1e-9, epochs=10), stuck, seed=0, device="cpu"):
            seen.append(metrics)
    assert len(seen) == CHANCE_PATIENCE
    assert all(m.val_acc == pytest.approx(0.1) for m in seen)


def _metrics(epoch: int, acc: float, train_acc: float | None = None) -> EpochMetrics:
    return EpochMetrics(epoch=epoch, train_loss=2.3, train_acc=acc if train_acc is None
                        else train_acc, val_loss=2.3, val_acc=acc, lr=1e-3, seconds=1.0,
                        images_per_s=1.0)


def test_check_chance_directly() -> None:
    at_chance = [_metrics(i, 0.1) for i in range(1, 4)]
    _check_chance(at_chance[:2])  # not yet patience epochs
    with pytest.raises(TrainingDiverged, match="for 3 epochs up to epoch 3"):
        _check_chance(at_chance)
    _check_chance([_metrics(1, 0.1), _metrics(2, 0.1), _metrics(3, 0.5)])  # recovered
    _check_chance([_metrics(1, 0.1, 0.3)] * 3)  # learning the training set: not stuck
    _check_chance([_metrics(1, 0.13)] * 3)  # above chance + margin
    with pytest.raises(TrainingDiverged):
        _check_chance([_metrics(1, 0.9)] + [_metrics(i, 0.05) for i in range(2, 5)])


def test_chance_is_one_over_the_data_s_class_count() -> None:
    """With 100 classes (CIFAR-100), 8% accuracy is learning; with 3, 30% is chance."""
    _check_chance([_metrics(i, 0.08) for i in range(1, 4)], num_classes=100)
    with pytest.raises(TrainingDiverged):
        _check_chance([_metrics(i, 0.3) for i in range(1, 4)], num_classes=3)


# --------------------------------------------------------------------------------------------
# reproducibility and checkpoints
# --------------------------------------------------------------------------------------------

def test_same_seed_same_metrics(data: TrainValData) -> None:
    params = tiny(epochs=2, augment=True, random_erasing=0.3, dropout=0.1)
    a = fit(params, data, seed=1, device="cpu").run_to_end().history
    b = fit(params, data, seed=1, device="cpu").run_to_end().history
    c = fit(params, data, seed=2, device="cpu").run_to_end().history
    for x, y in zip(a, b, strict=True):
        _same_metrics(x, y)
    assert a[-1].train_loss != c[-1].train_loss


def test_fp32_is_reproducible_too(data: TrainValData) -> None:
    params = tiny(epochs=1, precision="fp32")
    a = fit(params, data, seed=0, device="cpu").run_to_end().history
    b = fit(params, data, seed=0, device="cpu").run_to_end().history
    _same_metrics(a[0], b[0])


def test_resume_from_checkpoint_matches_uninterrupted_run(data: TrainValData,
                                                          tmp_path: Path) -> None:
    # every source of state: cosine schedule with warmup, augmentation (generator), dropout
    # (torch RNG), Adam moments
    params = tiny(epochs=3, scheduler="cosine", warmup_epochs=1, augment=True,
                  random_erasing=0.3, dropout=0.1, optimizer="adamw", weight_decay=0.01)
    full = fit(params, data, seed=4, device="cpu").run_to_end().history

    path = tmp_path / "ckpt" / "run.pt"
    for metrics in fit(params, data, seed=4, device="cpu", checkpoint=path):
        if metrics.epoch == 3:
            break  # the caller stops (pruning), or the process is killed, during epoch 3
    state = torch.load(path, map_location="cpu", weights_only=True)  # no pickled code
    assert state["epoch"] == 2
    assert not path.with_name("run.pt.tmp").exists()

    run = fit(params, data, seed=4, device="cpu", resume_from=path)
    called = list(run)
    resumed = run.history
    assert [m.epoch for m in called] == [3]  # finished epochs are not redone
    assert [m.epoch for m in resumed] == [1, 2, 3]
    _same_metrics(resumed[2], full[2], tol=1e-6)
    _same_metrics(resumed[0], full[0])


def test_checkpoint_written_every_epoch_and_loadable(data: TrainValData, tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    epochs: list[int] = []

    for _ in fit(tiny(epochs=2), data, seed=0, device="cpu", checkpoint=path):
        if path.exists():
            epochs.append(load_checkpoint(path)["epoch"])
    assert epochs == [1]  # while the caller handles epoch 2, epoch 1's checkpoint is there
    state = load_checkpoint(path)
    assert state["epoch"] == 2 and len(state["history"]) == 2
    assert set(state) >= {"model", "optimizer", "scheduler", "generator", "torch_rng"}


def test_save_checkpoint_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "x.pt"
    save_checkpoint(path, {"a": torch.ones(3), "epoch": 1})
    save_checkpoint(path, {"a": torch.zeros(3), "epoch": 2})
    assert load_checkpoint(path)["epoch"] == 2
    assert [p.name for p in path.parent.iterdir()] == ["x.pt"]


# --------------------------------------------------------------------------------------------
# the rest of the trainer's surface
# --------------------------------------------------------------------------------------------

def test_train_result(data: TrainValData) -> None:
    steps: list[tuple[int, int]] = []
    result = fit(tiny(epochs=2), data, seed=0, device="cpu",
                 on_step=lambda done, total: steps.append((done, total))).run_to_end()
    assert result.n_params == sum(p.numel() for p in result.model.parameters())
    assert result.best in result.history
    assert result.best.val_acc == max(m.val_acc for m in result.history)
    assert steps[-1] == (9, 9) and len(steps) == 18  # 540 images / 64 per batch, twice
    m = result.history[-1]
    assert m.seconds > 0 and m.images_per_s > 0 and 0 <= m.val_acc <= 1
    assert math.isfinite(m.val_loss)


def test_stopping_the_loop_stops_training(data: TrainValData) -> None:
    steps: list[int] = []
    run = fit(tiny(epochs=5), data, seed=0, device="cpu",
              on_step=lambda done, total: steps.append(done))
    # built before the first epoch: the size is the trained model's, known up front
    assert run.n_params == sum(p.numel() for p in run.model.parameters())
    assert run.history == [] and steps == []
    for metrics in run:
        assert metrics.epoch == 1
        break
    assert len(steps) == 9 and [m.epoch for m in run.history] == [1]  # no epoch 2 began
    with pytest.raises(RuntimeError, match="only once"):
        next(iter(run))


def test_mlp_baseline_trains(data: TrainValData) -> None:
    history = fit(tiny(model="mlp", mlp_width=64, epochs=2, lr=3e-3), data, seed=0,
                  device="cpu").run_to_end().history
    assert history[-1].val_acc > 0.5


def test_compile_on_drops_the_last_partial_batch(data: TrainValData,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch, "compile", lambda model: model)  # keep the test fast
    steps: list[tuple[int, int]] = []
    fit(tiny(epochs=1, compile="on"), data, seed=0, device="cpu",
        on_step=lambda done, total: steps.append((done, total))).run_to_end()
    assert steps[-1] == (8, 8)  # 540 // 64 full batches


def test_compile_on_with_less_than_one_batch_still_trains(
        data: TrainValData, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch, "compile", lambda model: model)
    steps: list[tuple[int, int]] = []
    history = fit(tiny(epochs=1, compile="on", batch_size=1024), data, seed=0, device="cpu",
                  on_step=lambda done, total: steps.append((done, total))).run_to_end().history
    assert steps == [(1, 1)]
    assert history[0].images_per_s > 0


def test_tune_malloc_is_idempotent() -> None:
    import sys

    first = tune_malloc()
    assert tune_malloc() == first
    if sys.platform.startswith("linux"):
        import platform

        assert first == (platform.libc_ver()[0] == "glibc")


def test_evaluate(data: TrainValData) -> None:
    model = build_model(tiny(), data.image_shape)
    loss, acc = evaluate(model, data.val, torch.device("cpu"), None)
    with torch.no_grad():
        logits = model(data.val.images)
    assert loss == pytest.approx(nn.functional.cross_entropy(logits, data.val.labels).item(),
                                 rel=1e-5)
    assert acc == pytest.approx((logits.argmax(1) == data.val.labels).float().mean().item())
    assert not model.training


def test_resolve_device() -> None:  # precision: tests/trainer/test_runtime.py
    cpu = torch.device("cpu")
    assert resolve_device("cpu") == cpu
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == cpu
        with pytest.raises(ValueError, match="no CUDA"):
            resolve_device("cuda")


def test_configure_threads() -> None:
    before = torch.get_num_threads()
    try:
        assert configure_threads(1) == 1 and torch.get_num_threads() == 1
        assert configure_threads(None) >= 1
    finally:
        torch.set_num_threads(before)


def test_a_checkpoint_of_another_model_is_one_line(tmp_path: Path) -> None:
    """Resuming with weights of another size read as `unexpected RuntimeError` (torch's
    multi-line 'Error(s) in loading state_dict')."""
    path = tmp_path / "other.pt"
    save_checkpoint(path, build_model(tiny(hidden_dim=32), (1, 28, 28)).state_dict())
    with pytest.raises(CheckpointError) as error:
        load_weights(build_model(tiny(hidden_dim=16), (1, 28, 28)), load_checkpoint(path), path)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"checkpoint {path} does not fit the model: size mismatch for ")
