"""Datasets in memory: the files data_files.py finds as tensors (those of a dataset known by name
read by named_datasets.py), the seeded validation split (batches and augmentation: batches.py).

The whole dataset is loaded once into tensors; batches are slices of them, and augmentation runs
on whole batches (no per-image Python). The test split is loaded only by `load_test_split`, which
only final evaluation calls.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from hpsearch.errors import HpsearchError
from hpsearch.files import atomic_write
from hpsearch.params import NUM_CLASSES, SYNTHETIC_SHAPE, DataOptions, synthetic_test_size
from hpsearch.paths import cache_dir
from hpsearch.trainer.data_files import (
    LAYOUTS,
    MNIST_FILES,
    DataNotFoundError,
    candidate_dirs,
    find_dataset,
    given_dirs,
    idx_sources,
    layout_sources,
)
from hpsearch.trainer.data_sources import (
    dataset_facts,
    folder_listing,
    is_local,
    local_path,
    read_local,
)
from hpsearch.trainer.named_datasets import (
    missing_message,
    read_named,
    source_key,
    try_download,
)

log = logging.getLogger(__name__)


@dataclass
class Split:
    """Normalised images (N, C, H, W float32) and integer labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class TrainValData:
    train: Split
    val: Split
    dataset: str
    mean: float
    std: float
    num_classes: int = NUM_CLASSES

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])  # type: ignore[return-value]

    def train_fraction(self, fraction: float) -> TrainValData:
        """The first `fraction` of the training split (at least one image), the same
        validation split and statistics. The split is already in a seeded random order, so
        this is a random subset, and a larger fraction contains every smaller one (a rung of a
        multi-fidelity budget only adds images)."""
        n = max(1, round(len(self.train) * fraction))
        train = Split(self.train.images[:n], self.train.labels[:n])  # views, no copy
        return TrainValData(train, self.val, self.dataset, self.mean, self.std, self.num_classes)



def _cached_tensors(dataset: str, train: bool, sources: list[Path],
                    load: Callable[[], tuple[torch.Tensor, torch.Tensor]]
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """`load()`'s tensors, saved once in our cache and read back from there afterwards.

    Importing torchvision and parsing the files costs each worker process ~1.5 s of start-up;
    the saved uint8 tensors load in ~0.05 s. The file name is keyed by the source files, so
    replacing them invalidates the copy. A cache that cannot be read or written costs
    start-up time, nothing else."""
    split = "train" if train else "test"
    key = source_key((dataset, split), sources)
    name = re.sub(r"[^\w.-]", "_", Path(dataset).name)  # a path's last part
    path = cache_dir() / "tensors" / f"{name}-{split}-{key}.pt"
    if path.exists():
        try:
            saved = torch.load(path, weights_only=True)
            return saved["images"], saved["labels"]
        except Exception as exc:  # whatever is wrong, the source files remain
            log.warning("dataset cache %s unreadable (%s); parsing the files again", path, exc)
    images, labels = load()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # atomic: a concurrent worker never reads a half-written copy
        with atomic_write(path, "wb") as out:
            torch.save({"images": images, "labels": labels}, out)
    # torch.save reports I/O errors as RuntimeError
    except (OSError, HpsearchError, RuntimeError) as exc:
        log.warning("dataset cache %s not written (%s); workers will parse the files", path, exc)
    return images, labels


def load_raw(dataset: str, data_dir: str | None, train: bool,
             download: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N, C, H, W) and labels of the train or test split of a real dataset: one
    known by name, or an image folder or .npz file (data_sources.py)."""
    if is_local(dataset):
        path = local_path(dataset)
        return _cached_tensors(dataset, train, _local_sources(path, train),
                               lambda: _local_tensors(path, train))
    given = given_dirs(data_dir)  # candidate_dirs' first places: given[:i] passed over at i
    found = find_dataset(dataset, data_dir)
    if found is not None:
        position, folder = found
        _warn_passed_over(dataset, given[:position])
        sources = (layout_sources(folder, dataset) if dataset in LAYOUTS else
                   idx_sources(folder, MNIST_FILES[:2] if train else MNIST_FILES[2:]))
        return _cached_tensors(dataset, train, sources,
                               lambda: read_named(dataset, folder, train))
    download_root = cache_dir() / "downloads"
    if download and try_download(dataset, download_root):
        _warn_passed_over(dataset, given)
        return load_raw(dataset, str(download_root), train, download=False)
    raise DataNotFoundError(missing_message(dataset, candidate_dirs(dataset, data_dir)))


def read_ahead(options: DataOptions) -> None:
    """Both splits of a real dataset read once, as `hpsearch run` does before it writes
    anything: one known by name and missing here is downloaded, or one line says why not; a
    file missing, damaged or malformed, in the training set or the test set that the final
    evaluation reads hours later, is one DataError line. The tensors are cached for the
    workers and the evaluation; the test set is only read here, never scored."""
    if options.dataset != "synthetic":
        for train in (True, False):
            load_raw(options.dataset, options.data_dir, train=train)


def _local_sources(path: Path, train: bool) -> list[Path]:
    if path.suffix == ".npz":
        return [path]
    listing = folder_listing(path)  # the first training image decides the shape of both splits
    return [listing.images["train"][0][0]] + [
        image for image, _ in listing.images["train" if train else "test"]]


def _local_tensors(path: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = read_local(path, train)
    return torch.from_numpy(images), torch.from_numpy(labels)


_warned: set[tuple[str, Path]] = set()


def _warn_passed_over(dataset: str, passed: list[Path]) -> None:
    """The user's own folders that did not hold the dataset found elsewhere, said once
    per folder and process, so that a mistyped --data-dir or $HPSEARCH_DATA does not go
    unnoticed (when it is found nowhere, the one-line error names every folder tried)."""
    for folder in passed:
        if (dataset, folder) not in _warned:
            _warned.add((dataset, folder))
            log.warning("%s: not found in %s (%s); using the copy found elsewhere", dataset,
                        folder, "no such folder" if not folder.is_dir() else "no dataset files")


def synthetic_raw(n: int, seed: int, shape: tuple[int, int, int] = SYNTHETIC_SHAPE,
                  blend: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """A learnable toy dataset with real shapes: each class is a fixed random pattern plus
    noise. With `blend`, each image also leans towards another class's pattern, by a uniform
    share up to `blend`: past half-way it looks like the other class, so no model solves the
    set, and how close one gets depends on its settings (a toy search that does not saturate).
    """
    gen = torch.Generator().manual_seed(1234)  # same class patterns for every split
    prototypes = torch.rand((NUM_CLASSES, *shape), generator=gen) * 200
    gen.manual_seed(seed)
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=gen)
    noise = torch.randn((n, *shape), generator=gen) * 60
    patterns = prototypes[labels]
    if blend:  # drawn after the noise: without a blend, the images of earlier releases
        others = (labels + torch.randint(1, NUM_CLASSES, (n,), generator=gen)) % NUM_CLASSES
        share = torch.rand((n, 1, 1, 1), generator=gen) * blend
        patterns = (1 - share) * patterns + share * prototypes[others]
    images = (patterns + noise).clamp(0, 255).to(torch.uint8)
    return images, labels


def _normalise(images: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    return (images.float() / 255.0 - mean) / std


def _stats(images: torch.Tensor) -> tuple[float, float]:
    as_float = images.float() / 255.0
    return as_float.mean().item(), as_float.std().item()


def _images(options: DataOptions, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The uint8 images and labels of the training or test set of `options`' dataset."""
    if options.dataset != "synthetic":
        return load_raw(options.dataset, options.data_dir, train=train)
    if train:
        return synthetic_raw(options.synthetic_size, seed=0, blend=options.synthetic_blend)
    return synthetic_raw(synthetic_test_size(options.synthetic_size), seed=1,
                         blend=options.synthetic_blend)


def load_train_val(options: DataOptions, seed: int) -> TrainValData:
    """The training set, split into train and validation by a permutation seeded by `seed`."""
    classes = dataset_facts(options).classes
    images, labels = _images(options, train=True)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=gen)
    if options.subset is not None:
        order = order[: options.subset]
    n_val = max(1, round(len(order) * options.val_fraction))
    val_idx, train_idx = order[:n_val], order[n_val:]
    # statistics of the training part only, so nothing about validation leaks into training
    train_images = images[train_idx]
    mean, std = _stats(train_images)
    return TrainValData(Split(_normalise(train_images, mean, std), labels[train_idx]),
                        Split(_normalise(images[val_idx], mean, std), labels[val_idx]),
                        options.dataset, mean, std, classes)


def load_full_train(options: DataOptions) -> TrainValData:
    """The whole training set (train + validation) for retraining a final model: an empty
    validation split, and the statistics the test set must be normalised with."""
    images, labels = _images(options, train=True)
    mean, std = _stats(images)
    full = Split(_normalise(images, mean, std), labels)
    return TrainValData(train=full, val=Split(full.images[:0], full.labels[:0]),
                        dataset=options.dataset, mean=mean, std=std,
                        num_classes=dataset_facts(options).classes)


def load_test_split(options: DataOptions, mean: float, std: float) -> Split:
    """The test set, normalised with the training statistics. Only final evaluation calls this."""
    images, labels = _images(options, train=False)
    return Split(_normalise(images, mean, std), labels)
