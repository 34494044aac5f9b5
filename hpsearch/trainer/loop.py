"""The epoch loop: optimisers, schedulers, mixed precision, divergence checks and checkpoints.

The trainer knows nothing of Optuna or the database. `fit()` builds a run; iterating it yields
one EpochMetrics per epoch, and the caller stops training (a pruning decision, say) by simply
stopping the loop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hpsearch.errors import TrainingDiverged
from hpsearch.metrics import EpochMetrics
from hpsearch.objectives import DEFAULT
from hpsearch.params import NUM_CLASSES, TrialParams
from hpsearch.stop import check_stop
from hpsearch.trainer.batches import Augmentation, iterate_batches
from hpsearch.trainer.checkpoint import load_checkpoint, load_weights, save_checkpoint
from hpsearch.trainer.compile_choice import choose_compile
from hpsearch.trainer.data import Split, TrainValData
from hpsearch.trainer.model import build_model, count_parameters
from hpsearch.trainer.model_file import save_model_file
from hpsearch.trainer.runtime import RunSetup, resolve_device, resolve_precision, tune_malloc
from hpsearch.trainer.schedule import LrCurve, Schedule

CHANCE_MARGIN = 0.02  # accuracy within this of 1/classes counts as "at chance"
CHANCE_PATIENCE = 3  # epochs at chance before a run is declared divergent
EVAL_BATCH = 1024  # larger batches measured slower on a CPU (cache), smaller no faster


def make_optimizer(params: TrialParams, model: nn.Module) -> torch.optim.Optimizer:
    groups = list(model.parameters())
    # the fused (single-kernel) implementations of SGD/Adam/AdamW: same update, one pass over
    # all parameters instead of ~10 small ops per tensor; CPU and CUDA float parameters only
    fused = {"fused": True} if groups and all(
        p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in groups) else {}
    if params.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=params.lr, momentum=params.momentum,
                               weight_decay=params.weight_decay, nesterov=params.nesterov,
                               **fused)
    adam = {"lr": params.lr, "betas": (params.beta1, params.beta2), "eps": params.eps,
            "weight_decay": params.weight_decay}
    if params.optimizer == "adam":
        return torch.optim.Adam(groups, **adam, **fused)
    if params.optimizer == "adamw":
        return torch.optim.AdamW(groups, **adam, **fused)
    if params.optimizer == "radam":
        return torch.optim.RAdam(groups, **adam)
    raise ValueError(f"unknown optimizer {params.optimizer!r}")


def evaluate(model: nn.Module, split: Split, device: torch.device,
             autocast_dtype: torch.dtype | None) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over a split, in inference mode."""
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    with torch.inference_mode(), _autocast(device, autocast_dtype):
        for images, labels in iterate_batches(split, EVAL_BATCH):
            images, labels = images.to(device), labels.to(device)
            logits = model(images).float()
            loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum").double()
            correct += (logits.argmax(1) == labels).sum()
    return loss_sum.item() / len(split), correct.item() / len(split)


def predict_probs(model: nn.Module, split: Split, device: torch.device,
                  autocast_dtype: torch.dtype | None, *, flip: bool = False) -> torch.Tensor:
    """Softmax outputs (N, classes) over a split, in inference mode, float32 on the CPU (what
    an ensemble averages). `flip`: the mean of each image's outputs and its mirror image's
    (horizontal-flip test-time augmentation)."""
    model.eval()
    out = []
    with torch.inference_mode(), _autocast(device, autocast_dtype):
        for images, _ in iterate_batches(split, EVAL_BATCH):
            images = images.to(device)
            probs = model(images).float().softmax(1)
            if flip:
                probs = (probs + model(images.flip(-1)).float().softmax(1)) / 2
            out.append(probs.cpu())
    return torch.cat(out) if out else torch.empty(0, NUM_CLASSES)


def _autocast(device: torch.device, dtype: torch.dtype | None) -> torch.autocast:
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


class Training:
    """One training run of `params` on `data`: iterate it for one EpochMetrics per epoch.

        run = fit(params, data, seed=0)
        for metrics in run:        # stop the loop to stop training (pruning, say)
            ...
        run.model, run.history, run.best

    The model is built (and `resume_from` loaded) here, before the first epoch, so the caller
    can read `n_params` and `setup` (device, precision, threads) even for a run that ends early.
    `checkpoint`: written after every epoch, once the caller asks for the next one (so a
    checkpoint never holds an epoch the caller has not handled). `resume_from`: a checkpoint to
    continue from; its finished epochs are neither redone nor yielded again. `stop_after`:
    stop after this epoch, as if the run went on (the schedule still spans `params.epochs`); a
    multi-fidelity rung trains up to its epoch, then the next resumes from the checkpoint on
    more data. `lr_curve`: the learning rate of every step, in place of the params' schedule
    (a final retraining replays the searched run's with `schedule.replay_curve`); without it a
    plateau schedule needs a validation split.
    `on_step(done, total)` is called after each training batch (for progress bars).
    Iterating raises TrainingDiverged when a run cannot produce a useful model; a run can be
    iterated once.
    """

    def __init__(self, params: TrialParams, data: TrainValData, *, seed: int = 0,
                 device: str = "auto", on_step: Callable[[int, int], None] | None = None,
                 checkpoint: Path | None = None, resume_from: Path | None = None,
                 stop_after: int | None = None, lr_curve: LrCurve | None = None) -> None:
        self.params, self.data, self.on_step, self.checkpoint = params, data, on_step, checkpoint
        self.seed = seed
        self.last_epoch = params.epochs if stop_after is None else min(params.epochs, stop_after)
        self.device = dev = resolve_device(device)
        if dev.type == "cpu":
            tune_malloc()
        # before seeding: on a machine's first run this measures fp32 against bf16
        self.setup: RunSetup = resolve_precision(params.precision, dev)
        torch.manual_seed(seed)
        self.gen = torch.Generator().manual_seed(seed)  # shuffling and augmentation
        self.model: nn.Module = build_model(params, data.image_shape, data.num_classes).to(dev)
        self.n_params = count_parameters(self.model)
        self.optimizer = make_optimizer(params, self.model)
        # the run's length counts from epoch 1 (a resumed run's is shorter: the margin absorbs it)
        self.compiled, self.compile_reason = choose_compile(
            params, data.image_shape, self.last_epoch * len(data.train), dev, self.setup.precision)
        # one batch shape, so compile traces once (unless there is not even one full batch)
        self.drop_last = self.compiled and len(data.train) >= params.batch_size
        steps = (len(data.train) // params.batch_size if self.drop_last
                 else math.ceil(len(data.train) / params.batch_size))
        self.steps_per_epoch = max(1, steps)
        self.schedule = Schedule(params, self.optimizer, self.steps_per_epoch, lr_curve)
        if self.schedule.plateau is not None and not len(data.val):
            raise ValueError("a plateau schedule without a validation split needs an lr_curve "
                             "to replay")
        self.augment = Augmentation(params.crop_padding, params.hflip, params.random_erasing,
                                    fill=-data.mean / data.std) if params.augment else None
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=params.label_smoothing)
        # compiled lazily by torch on the first step; the same weights as self.model
        self.step_model = torch.compile(self.model) if self.compiled else self.model
        self.history: list[EpochMetrics] = []
        self.first_epoch = 1
        self._started = False
        if resume_from is not None:
            state = load_checkpoint(resume_from)
            load_weights(self.model, state["model"], resume_from)
            self.optimizer.load_state_dict(state["optimizer"])
            self.schedule.load_state_dict(state["scheduler"])
            self.gen.set_state(state["generator"])
            torch.set_rng_state(state["torch_rng"])
            self.history = [EpochMetrics(**m) for m in state["history"]]
            self.first_epoch = state["epoch"] + 1

    @property
    def best(self) -> EpochMetrics | None:
        """The epoch of the best validation accuracy (the objectives' one rule for it)."""
        index = DEFAULT[0].best_index([m.val_acc for m in self.history])
        return None if index is None else self.history[index]

    def save_model(self, path: Path, **info: Any) -> None:
        """The model as it is now, in a self-contained model file (`model_file`) with `info`."""
        save_model_file(path, self.model, self.params, self.data.image_shape,
                        self.data.num_classes, self.data.mean, self.data.std, **info)

    def run_to_end(self) -> Training:
        """Train every epoch without looking at them (benchmarks, tests)."""
        for _ in self:
            pass
        return self

    def __iter__(self) -> Iterator[EpochMetrics]:
        if self._started:  # the optimiser and RNG state moved on: a second pass would lie
            raise RuntimeError("a Training can be iterated only once")
        self._started = True
        for epoch in range(self.first_epoch, self.last_epoch + 1):
            metrics = self._epoch(epoch)
            self.history.append(metrics)
            yield metrics
            # the caller handled the epoch (recorded it, say) and asked for the next one
            if self.checkpoint is not None:
                self._save(epoch)
            _check_chance(self.history, self.data.num_classes)

    def _epoch(self, epoch: int) -> EpochMetrics:
        params, data, dev, model = self.params, self.data, self.device, self.model
        autocast_dtype = self.setup.autocast_dtype
        augment, loss_fn, optimizer = self.augment, self.loss_fn, self.optimizer
        started = time.perf_counter()
        model.train()
        # running sums stay on the device: no host sync per step on a GPU
        loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
        correct = torch.zeros((), dtype=torch.int64, device=dev)
        seen = 0
        lr = self.schedule.before_step(epoch, 0)  # the rate the epoch starts with is its record
        for step, (images, labels) in enumerate(iterate_batches(data.train, params.batch_size,
                                                                self.gen)):
            check_stop()  # a worker's stop request ends the run here: a batch is never torn
            if self.drop_last and len(labels) < params.batch_size:
                break
            if augment is not None:
                images = augment(images, self.gen)
            images, labels = images.to(dev, non_blocking=True), labels.to(dev, non_blocking=True)
            self.schedule.before_step(epoch, step)
            with _autocast(dev, autocast_dtype):
                logits = self.step_model(images)
                loss = loss_fn(logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach().double() * len(labels)
            correct += (logits.detach().argmax(1) == labels).sum()
            seen += len(labels)
            if self.on_step is not None:
                self.on_step(step + 1, self.steps_per_epoch)
        train_seconds = time.perf_counter() - started
        train_loss = loss_sum.item() / max(1, seen)
        if not math.isfinite(train_loss):
            raise TrainingDiverged(f"non-finite training loss at epoch {epoch}")
        if len(data.val):
            val_loss, val_acc = evaluate(model, data.val, dev, autocast_dtype)
            if not math.isfinite(val_loss):
                raise TrainingDiverged(f"non-finite validation loss at epoch {epoch}")
        else:  # no validation split (final retraining on train + val): nothing to check
            val_loss = val_acc = math.nan
        train_acc = correct.item() / max(1, seen)
        self.schedule.after_epoch(val_loss, val_acc)
        return EpochMetrics(
            epoch=epoch, train_loss=train_loss, train_acc=train_acc,
            val_loss=val_loss, val_acc=val_acc, lr=lr,
            seconds=time.perf_counter() - started, images_per_s=seen / train_seconds,
        )

    def _save(self, epoch: int) -> None:
        assert self.checkpoint is not None
        save_checkpoint(self.checkpoint, {
            "epoch": epoch, "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.schedule.state_dict(),
            "generator": self.gen.get_state(), "torch_rng": torch.get_rng_state(),
            "history": [m.to_dict() for m in self.history],
            # what the run is, so that the file alone says what trained it
            "params": self.params.to_dict(), "seed": self.seed,
        })


fit = Training  # the name callers train with: `for metrics in fit(params, data): ...`


def _check_chance(history: list[EpochMetrics], num_classes: int = NUM_CLASSES) -> None:
    """Stop a run whose accuracy has sat at chance for CHANCE_PATIENCE epochs."""
    if len(history) < CHANCE_PATIENCE:
        return
    chance = 1.0 / num_classes + CHANCE_MARGIN
    recent = history[-CHANCE_PATIENCE:]
    if all(m.val_acc <= chance and m.train_acc <= chance for m in recent):
        raise TrainingDiverged(
            f"accuracy at chance (val {recent[-1].val_acc:.3f}) for {CHANCE_PATIENCE} epochs "
            f"up to epoch {recent[-1].epoch}"
        )
