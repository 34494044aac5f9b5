"""The real trainer as the objective sees it: torch, the dataset, the model, checkpoints.

Kept apart from hpsearch.search.objective so that a dry-run worker (hpsearch.search.dryrun)
never imports torch: 64 of them must fit in the memory that a handful of torch processes take.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hpsearch.params import TrialParams
from hpsearch.trainer.checkpoint import load_checkpoint
from hpsearch.trainer.data import TrainValData
from hpsearch.trainer.loop import Training, fit
from hpsearch.trainer.runtime import resolve_device, resolve_precision


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

    def load_checkpoint(self, path: Path) -> dict[str, Any]:
        return load_checkpoint(path)

    def start(self, params: TrialParams, *, seed: int, checkpoint: Path | None,
              resume_from: Path | None, fraction: float | None = None,
              stop_after: int | None = None) -> Training:
        data = self.data if fraction is None else self.data.train_fraction(fraction)
        return fit(params, data, seed=seed, device=self.device, checkpoint=checkpoint,
                   resume_from=resume_from, stop_after=stop_after)
