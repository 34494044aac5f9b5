"""Learning-rate schedules, as the trainer runs them and as a final retraining replays them.

A schedule's learning rate is a curve over the run's position measured in epochs (0.0: the first
step; 2.5: halfway through the third epoch), not in steps, so the same curve has the same shape
over epochs on any amount of data: a rung that adds images, or a retraining on train +
validation, has more steps per epoch and follows the curve more finely, nothing else. The
learning rate an epoch records is the curve at its start, so two runs of one curve on different
data record the same rates.

none, step and cosine are curves of the position alone (`planned_curve`). plateau follows the
validation metric (torch's ReduceLROnPlateau) and can only be replayed: `replay_curve` redraws a
finished run's rate, which is what retraining without a validation split needs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from hpsearch.params import TrialParams

# the learning rate at a position of the run, in epochs done (fractions within an epoch)
LrCurve = Callable[[float], float]


def planned_curve(params: TrialParams) -> LrCurve | None:
    """The learning-rate curve of a schedule that depends on the position only; None for
    plateau, which depends on the validation metric."""
    lr = params.lr
    if params.scheduler == "none":
        return lambda position: lr
    if params.scheduler == "step":
        gamma, size = params.gamma, params.step_size
        return lambda position: lr * gamma ** (int(position) // size)
    if params.scheduler == "cosine":
        return _cosine(lr, params.min_lr, params.warmup_epochs, params.epochs)
    return None


def _cosine(peak: float, floor: float, warmup: float, span: float) -> LrCurve:
    """Linear warm-up from 0 over `warmup` epochs, then cosine decay to `floor` at `span`."""
    def curve(position: float) -> float:
        if position < warmup:
            return peak * position / warmup
        progress = min(1.0, (position - warmup) / (span - warmup))
        return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return curve


def replay_curve(params: TrialParams, lrs: Sequence[float]) -> LrCurve:
    """The curve that retrains `params` as a finished run of them went, the rate each of its
    epochs started with being `lrs`. A position-only schedule is its own curve (its record is
    that curve's samples, and it continues past the record where a retraining is longer);
    plateau holds each epoch's recorded rate, cuts included, and the last one after the record
    ends."""
    planned = planned_curve(params)
    if planned is not None:
        return planned
    if not lrs:
        raise ValueError("replaying a plateau schedule needs the run's recorded learning rates")
    rates = tuple(lrs)
    return lambda position: rates[min(int(position), len(rates) - 1)]


class Schedule:
    """Sets the optimiser's learning rate: from a curve before every step (`planned_curve`, or
    one handed in to replay another run), else (plateau) torch's ReduceLROnPlateau after every
    epoch, watching the validation metric."""

    def __init__(self, params: TrialParams, optimizer: torch.optim.Optimizer,
                 steps_per_epoch: int, curve: LrCurve | None = None) -> None:
        self.optimizer, self.steps_per_epoch = optimizer, steps_per_epoch
        self.curve = curve or planned_curve(params)
        self.watches_acc = params.plateau_metric == "val_acc"
        self.plateau = None if self.curve is not None else (
            torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode=params.plateau_direction, factor=params.gamma,
                patience=params.plateau_patience, threshold=params.plateau_threshold,
                cooldown=params.plateau_cooldown, min_lr=params.min_lr))

    def before_step(self, epoch: int, step: int) -> float:
        """Set (for a curve) and return the learning rate of `step` (0-based) of `epoch`
        (1-based)."""
        if self.curve is not None:
            lr = self.curve(epoch - 1 + step / self.steps_per_epoch)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        return self.optimizer.param_groups[0]["lr"]

    def after_epoch(self, val_loss: float, val_acc: float) -> None:
        if self.plateau is not None:
            self.plateau.step(val_acc if self.watches_acc else val_loss)

    def state_dict(self) -> dict:
        """What a checkpoint keeps: plateau's memory of the metric; a curve needs nothing (its
        position is the epochs done)."""
        return self.plateau.state_dict() if self.plateau is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.plateau is not None:
            self.plateau.load_state_dict(state)
