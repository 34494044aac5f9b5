"""Batches of an in-memory split, and augmentation on whole batches (no per-image Python)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from hpsearch.trainer.data import Split


def iterate_batches(split: Split, batch_size: int, generator: torch.Generator | None = None
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches in a shuffled order (when a generator is given) or in order."""
    n = len(split)
    order = torch.randperm(n, generator=generator) if generator is not None else None
    for start in range(0, n, batch_size):
        if order is None:
            yield split.images[start:start + batch_size], split.labels[start:start + batch_size]
        else:
            idx = order[start:start + batch_size]
            yield split.images[idx], split.labels[idx]


@dataclass(frozen=True)
class Augmentation:
    """Per-sample random crop (with padding), horizontal flip and random erasing, on a batch."""

    crop_padding: int = 2
    hflip: bool = True
    random_erasing: float = 0.0
    fill: float = 0.0  # the normalised value of a black pixel

    def __call__(self, images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if self.crop_padding:
            images = self._random_crop(images, gen)
        if self.hflip:
            flip = torch.rand(images.shape[0], generator=gen) < 0.5
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        if self.random_erasing > 0:
            images = self._erase(images, gen)
        return images

    def _random_crop(self, images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        b, c, h, w = images.shape
        p = self.crop_padding
        padded = torch.nn.functional.pad(images, (p, p, p, p), value=self.fill)
        dy = torch.randint(0, 2 * p + 1, (b,), generator=gen)
        dx = torch.randint(0, 2 * p + 1, (b,), generator=gen)
        # each sample's window as offsets into its flattened padded image: one gather, ~3x
        # faster than indexing with (batch, row, column) index tensors
        wide = w + 2 * p
        window = (torch.arange(h)[:, None] * wide + torch.arange(w)).flatten()
        offsets = (dy * wide + dx)[:, None] + window  # (B, H*W)
        flat = padded.view(b, c, -1).gather(2, offsets[:, None, :].expand(b, c, h * w))
        return flat.view(b, c, h, w)

    def _erase(self, images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Erase one rectangle (2-33% of the area, aspect 0.3-3.3) in a random share of samples."""
        b, _, h, w = images.shape
        area = torch.empty(b).uniform_(0.02, 0.33, generator=gen) * h * w
        log_ratio = torch.empty(b).uniform_(-1.2, 1.2, generator=gen)
        eh = (area * log_ratio.exp()).sqrt().round().clamp(1, h).long()
        ew = (area / log_ratio.exp()).sqrt().round().clamp(1, w).long()
        top = (torch.rand(b, generator=gen) * (h - eh + 1)).long()
        left = (torch.rand(b, generator=gen) * (w - ew + 1)).long()
        chosen = torch.rand(b, generator=gen) < self.random_erasing
        ys = torch.arange(h)[None, :, None]
        xs = torch.arange(w)[None, None, :]
        mask = ((ys >= top[:, None, None]) & (ys < (top + eh)[:, None, None])
                & (xs >= left[:, None, None]) & (xs < (left + ew)[:, None, None])
                & chosen[:, None, None])
        return images.masked_fill(mask[:, None], self.fill)
