"""The real trainer as the objective sees it: torch, the dataset, the model, checkpoints.

Kept apart from hpsearch.objective so that a dry-run worker (hpsearch.dryrun) never imports
torch: 64 of them must fit in the memory that a handful of torch processes take.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from hpsearch.data import TrainValData
from hpsearch.metrics import EpochMetrics
from hpsearch.model import build_model, count_parameters
from hpsearch.params import TrialParams
from hpsearch.runtime import resolve_device, resolve_precision
from hpsearch.train import load_checkpoint, train


class TorchTrainer:
    """Trains each trial's model on `data` on one device (resolved once per worker)."""

    keeps_checkpoints = True

    def __init__(self, data: TrainValData, device: str = "auto") -> None:
        self.data = data
        self._device = resolve_device(device)  # "auto" -> cpu or cuda
        self.device = str(self._device)

    def precision(self, params: TrialParams) -> str:
        """What the run uses ("auto" resolved), recorded so trials from other machines compare."""
        return resolve_precision(params.precision, self._device).precision

    def count_parameters(self, params: TrialParams) -> int:
        return count_parameters(build_model(params, self.data.image_shape))

    def load_checkpoint(self, path: Path) -> dict[str, Any]:
        return load_checkpoint(path)

    def train(self, params: TrialParams, *, seed: int, on_epoch: Callable[[EpochMetrics], None],
              checkpoint: Path | None, resume_from: Path | None,
              fraction: float | None = None, stop_after: int | None = None) -> None:
        data = self.data if fraction is None else self.data.train_fraction(fraction)
        train(params, data, seed=seed, device=self.device, on_epoch=on_epoch,
              checkpoint=checkpoint, resume_from=resume_from, stop_after=stop_after)
