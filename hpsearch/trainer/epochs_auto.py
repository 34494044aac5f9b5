"""`evaluate --epochs auto`: the final retraining's length chosen on validation, not guessed.

A search trains every trial on a short budget and the final model often gains from a longer one;
which length is right is a choice, and choices are made on validation data. The configuration is
retrained on the whole training set less a held-out slice ([data] val_fraction of it, split with
the study's seed + 1, so the slice is not the one the trial was chosen on), then:
- schedules whose learning rate does not depend on the run's length (none, step, plateau): one
  run of up to AUTO_FACTOR times the trial's own length, ended after PATIENCE epochs without a
  better held-out accuracy; the length is the epoch of the best one (the earliest of equals);
- cosine, whose whole curve stretches with the length: one run per length in COSINE_FACTORS times
  the trial's own, each to its end; the length whose last epoch scores best (the shortest of
  equals).
The final retraining then uses that many epochs on train + validation (about 1/(1-val_fraction)
times as many steps per epoch), replaying the learning rate the chosen run had at each of them
(a plateau schedule's cuts came from the held-out slice). Nothing here reads the test set.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from hpsearch.errors import HpsearchError
from hpsearch.metrics import EpochMetrics
from hpsearch.params import DataOptions, TrialParams
from hpsearch.trainer import data as data_mod

AUTO_FACTOR = 2  # the longest curve considered, in multiples of the trial's own length
PATIENCE = 3  # epochs without a better held-out accuracy that end the curve
COSINE_FACTORS = (1.0, 1.5, 2.0)


@dataclass(frozen=True)
class AutoEpochs:
    epochs: int  # the chosen length
    # held-out accuracy per length tried (cosine) or per epoch of the one curve (others)
    scores: dict[int, float]
    seconds: float
    lrs: tuple[float, ...] = ()  # the rate each epoch of the chosen run started with


def choose_epochs(params: TrialParams, options: DataOptions, *, split_seed: int, seed: int,
                  device: str,
                  on_epoch: Callable[[EpochMetrics], None] | None = None) -> AutoEpochs:
    """The retraining length for `params` (its `epochs`: the trial's own length), chosen on a
    held-out slice of the whole training set."""
    from hpsearch.trainer.loop import TrainingDiverged, fit

    data = data_mod.load_train_val(replace(options, subset=None), split_seed)
    started = time.perf_counter()
    scores: dict[int, float] = {}
    lrs: dict[int, list[float]] = {}  # by length (cosine), or the one curve's under 0
    try:
        if params.scheduler == "cosine":
            for factor in COSINE_FACTORS:
                length = max(1, round(params.epochs * factor))
                if length in scores:
                    continue
                for metrics in fit(params.replace(epochs=length), data, seed=seed,
                                   device=device):
                    if on_epoch is not None:
                        on_epoch(metrics)
                    lrs.setdefault(length, []).append(metrics.lr)
                scores[length] = metrics.val_acc
        else:
            for metrics in fit(params.replace(epochs=AUTO_FACTOR * params.epochs), data,
                               seed=seed, device=device):
                if on_epoch is not None:
                    on_epoch(metrics)
                lrs.setdefault(0, []).append(metrics.lr)
                scores[metrics.epoch] = metrics.val_acc
                best = max(scores, key=lambda e: (scores[e], -e))
                if metrics.epoch - best >= PATIENCE:  # the curve stopped improving
                    break
    except TrainingDiverged as exc:
        raise HpsearchError(f"choosing the retraining length: the run diverged: {exc}") from None
    finite = {e: a for e, a in scores.items() if math.isfinite(a)}
    if not finite:
        raise HpsearchError("choosing the retraining length: no epoch had a held-out accuracy")
    chosen = max(finite, key=lambda e: (finite[e], -e))
    curve = lrs[chosen] if params.scheduler == "cosine" else lrs[0][:chosen]
    return AutoEpochs(chosen, scores, time.perf_counter() - started, tuple(curve))
