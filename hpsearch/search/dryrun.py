"""Dry-run trials: a sleep per epoch and a synthetic learning curve instead of training.

For testing a cluster set-up (scheduler, database, workers, heartbeats, retries) without the
cost of training, and for load benchmarks (bench/load.py). A study turns it on with

    [dry_run]
    seconds_per_epoch = 1.0

Everything else is the real path: the sampler suggests, the objective records every epoch
through the recorder, reports it to Optuna and asks the pruner, and heartbeats beat. Only the
trainer differs, and it imports no torch (64 dry-run workers fit where a few torch ones do).
The curve depends on the parameters (learning rate near 10^-2.5, some width and depth, little
dropout are "good"), so TPE has something to learn and the median pruner something to prune.
Dry-run trials keep no checkpoints: a retried one starts again from epoch 1.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hpsearch.errors import CheckpointError
from hpsearch.metrics import EpochMetrics
from hpsearch.params import TrialParams
from hpsearch.stop import wait

CHANCE = 0.1  # ten classes
BEST_LOG_LR = -2.5  # the synthetic optimum of the learning rate


def curve_ceiling(params: TrialParams) -> float:
    """The validation accuracy a long run of `params` would approach (between 0.1 and 0.95)."""
    lr_miss = math.log10(params.lr) - BEST_LOG_LR
    ceiling = (0.90 - 0.05 * lr_miss ** 2 - 0.15 * params.dropout ** 2
               + 0.01 * math.log2(max(params.hidden_dim, 1) / 64)
               + 0.005 * min(params.num_blocks, 4)
               - 0.01 * abs(math.log2(max(params.batch_size, 1) / 128)))
    return min(0.95, max(CHANCE, ceiling))


def synthetic_epoch(params: TrialParams, epoch: int, seed: int, seconds: float) -> EpochMetrics:
    """Epoch `epoch` (1-based) of the synthetic curve; a little noise, fixed by seed and epoch,
    so that two trials of equal params differ as real runs do."""
    rate = 0.6 / (1 + abs(math.log10(params.lr) - BEST_LOG_LR))  # a far-off lr learns slowly
    progress = 1 - math.exp(-rate * epoch)
    noise = random.Random(f"{seed}:{epoch}").uniform(-0.003, 0.003)
    val_acc = min(0.999, max(0.0, CHANCE + (curve_ceiling(params) - CHANCE) * progress + noise))
    train_acc = min(0.999, val_acc + 0.02 * progress)
    return EpochMetrics(epoch=epoch, train_loss=-math.log(train_acc), train_acc=train_acc,
                        val_loss=-math.log(max(val_acc, 1e-3)), val_acc=val_acc, lr=params.lr,
                        seconds=seconds, images_per_s=0.0)


class DryRunTrainer:
    """The objective's trainer for a [dry_run] study (see the module docstring)."""

    keeps_checkpoints = False
    device = "dry-run"

    def __init__(self, seconds_per_epoch: float) -> None:
        self.seconds_per_epoch = seconds_per_epoch

    def precision(self, params: TrialParams) -> str | None:
        return None

    def load_checkpoint(self, path: Path) -> dict[str, Any]:
        raise CheckpointError(f"checkpoint {path}: dry-run trials keep no checkpoints")

    def start(self, params: TrialParams, *, seed: int, checkpoint: Path | None,
              resume_from: Path | None, fraction: float | None = None,
              stop_after: int | None = None) -> DryRun:
        # no [budget] rungs here (config refuses them with [dry_run]): fraction is never set
        return DryRun(params, seed, self.seconds_per_epoch, stop_after)


class DryRun:
    """One dry-run trial: iterating it sleeps and yields each synthetic epoch."""

    n_params = None  # no model is built

    def __init__(self, params: TrialParams, seed: int, seconds_per_epoch: float,
                 stop_after: int | None) -> None:
        self.params, self.seed, self.seconds_per_epoch = params, seed, seconds_per_epoch
        self.last_epoch = params.epochs if stop_after is None else min(params.epochs, stop_after)

    def __iter__(self) -> Iterator[EpochMetrics]:
        for epoch in range(1, self.last_epoch + 1):
            started = time.monotonic()
            wait(self.seconds_per_epoch)  # a stop request ends it at once
            yield synthetic_epoch(self.params, epoch, self.seed, time.monotonic() - started)
