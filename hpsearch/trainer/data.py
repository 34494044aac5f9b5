"""Datasets in memory: the files data_files.py finds as tensors, the seeded validation split
(batches and augmentation: batches.py).

The whole dataset is loaded once into tensors; batches are slices of them, and augmentation runs
on whole batches (no per-image Python). The test split is loaded only by `load_test_split`, which
only final evaluation calls.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import re
import socket
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from hpsearch.errors import HpsearchError
from hpsearch.files import atomic_write
from hpsearch.masking import one_line
from hpsearch.params import NUM_CLASSES, SYNTHETIC_SHAPE, DataOptions, synthetic_test_size
from hpsearch.paths import cache_dir
from hpsearch.trainer.data_files import (
    LAYOUTS,
    MNIST_FILES,
    TORCHVISION_NAMES,
    DataError,
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

if TYPE_CHECKING:
    from torchvision.datasets import VisionDataset

DOWNLOAD_TIMEOUT_S = 10.0
CACHE_FORMAT = 1  # part of every cache key: bump it when what the cache stores changes
log = logging.getLogger(__name__)


class _CacheUnwritable(Exception):
    """Our cache folder cannot be created or written."""


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


def _source_key(parts: tuple, sources: list[Path]) -> str:
    """A name for what our cache derives from `sources`: any change to their paths, sizes or
    modification times (or to CACHE_FORMAT) gives a new name, so a stale copy is never read."""
    stats = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in sources]
    return hashlib.sha256(repr((CACHE_FORMAT, parts, stats)).encode()).hexdigest()[:16]


def _torchvision_root(dataset: str, folder: Path, cache: Path) -> Path:
    """torchvision reads only uncompressed files at ROOT/<Name>/raw; build that layout under
    `cache` (gunzipping .gz files, once per version of the source files) unless `folder` already
    is it. A damaged source (a truncated .gz) is a DataError naming it, and leaves no
    temporary file behind."""
    name = TORCHVISION_NAMES[dataset]
    if folder.name == "raw" and folder.parent.name == name and all(
        (folder / n).exists() for n in MNIST_FILES
    ):
        return folder.parent.parent
    sources = idx_sources(folder)
    root = cache / f"{dataset}-{_source_key((dataset,), sources)}"
    raw = root / name / "raw"
    try:
        raw.mkdir(parents=True, exist_ok=True)
        if not os.access(raw, os.W_OK):
            raise PermissionError(f"{raw} is read-only")
    except OSError as exc:
        raise _CacheUnwritable(str(exc)) from exc
    for n, source in zip(MNIST_FILES, sources, strict=True):
        target = raw / n
        if target.exists():
            continue
        # read whole (at most MNIST's 47 MB), then written: a file that is no gzip or is
        # truncated is named as the source it is, not as a target that could not be written
        try:
            with gzip.open(source, "rb") if source.suffix == ".gz" else open(source, "rb") as src:
                content = src.read()
        except (OSError, EOFError, zlib.error) as exc:  # truncated/corrupt .gz
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise DataError(f"cannot unpack dataset file {source} into {raw}: {reason}"
                            ) from exc
        try:
            # atomic: a concurrent worker never sees a half-written file, and a failed write
            # (a full disk) leaves no temporary file behind
            with atomic_write(target, "wb") as dst:
                dst.write(content)
        except HpsearchError as exc:
            raise DataError(f"cannot unpack dataset file {source} into {raw}: {exc}") from exc
    return root


def _parse_idx_folder(dataset: str, folder: Path, train: bool
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """The MNIST-format files in `folder`, parsed by torchvision. Unpacked .gz files are kept
    in our cache; where the cache cannot be written (a read-only home, XDG_CACHE_HOME naming a
    file) they are unpacked into a temporary folder that is removed afterwards."""
    try:
        root = _torchvision_root(dataset, folder, cache_dir() / "torchvision")
    except _CacheUnwritable as exc:
        log.warning("dataset cache cannot be written (%s); unpacking into a temporary "
                    "folder", exc)
        with tempfile.TemporaryDirectory(prefix="hpsearch-data-") as tmp:
            return _load_torchvision(dataset, _torchvision_root(dataset, folder, Path(tmp)),
                                     train)
    return _load_torchvision(dataset, root, train)


def _read_named(dataset: str, folder: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A split of a dataset known by name from the folder it was found in. Whatever is wrong
    with its files (one missing, not the published one, damaged, images and labels of two
    counts) is one DataError naming the folder, never torchvision's own error (CIFAR's and
    SVHN's say 'Dataset not found or corrupted. You can use download=True')."""
    try:
        images, labels = (_load_torchvision(dataset, folder, train) if dataset in LAYOUTS
                          else _parse_idx_folder(dataset, folder, train))
    except DataError:
        raise
    except Exception as exc:  # torchvision's checks of a damaged file vary
        raise DataError(f"cannot read the {dataset} files in {folder}: "
                        f"{_what_is_wrong(dataset, folder, exc)}") from exc
    if len(images) != len(labels):
        raise DataError(f"cannot read the {dataset} files in {folder}: {len(images)} images "
                        f"but {len(labels)} labels (damaged or truncated? replace them)")
    return images, labels


def _what_is_wrong(dataset: str, folder: Path, exc: Exception) -> str:
    """The first of the published files (torchvision's list and checksums) missing or
    different; else the error itself."""
    from torchvision import datasets
    from torchvision.datasets.utils import check_integrity

    cls = getattr(datasets, TORCHVISION_NAMES[dataset])
    if dataset == "svhn":
        published = [(folder / cls.split_list[s][1], cls.split_list[s][2])
                     for s in ("train", "test")]
    elif dataset in LAYOUTS:  # CIFAR
        base = folder / cls.base_folder
        published = [(base / name, md5) for name, md5 in cls.train_list + cls.test_list]
        published.append((base / cls.meta["filename"], cls.meta["md5"]))
    else:
        published = []
    missing = [path for path, _ in published if not path.is_file()]
    if missing:
        return (f"{', '.join(str(p.relative_to(folder)) for p in missing)} "
                f"{'is' if len(missing) == 1 else 'are'} missing")
    for path, md5 in published:
        if not check_integrity(str(path), md5):
            return (f"{path.relative_to(folder)} is not the published file (its MD5 checksum "
                    "differs: damaged? replace it)")
    why = one_line(exc) or f"not valid {dataset} files ({type(exc).__name__})"
    return f"{why} (damaged or truncated? replace them)"


def _torchvision_dataset(dataset: str, root: Path, train: bool, download: bool
                         ) -> VisionDataset:
    from torchvision import datasets

    cls = getattr(datasets, TORCHVISION_NAMES[dataset])
    split = {"split": "train" if train else "test"} if dataset == "svhn" else {"train": train}
    return cls(str(root), download=download, **split)


def _load_torchvision(dataset: str, root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    ds = _torchvision_dataset(dataset, root, train, download=False)
    images = torch.as_tensor(ds.data)  # MNIST's (N, H, W), CIFAR's (N, H, W, C), SVHN's NCHW
    if images.dim() == 3:
        images = images.unsqueeze(1)
    elif dataset.startswith("cifar"):
        images = images.permute(0, 3, 1, 2)
    labels = ds.labels if dataset == "svhn" else ds.targets
    return images.contiguous(), torch.as_tensor(labels).long()


def _try_download(dataset: str, root: Path) -> bool:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # fail within seconds when offline
    try:
        _torchvision_dataset(dataset, root, train=True, download=True)
        _torchvision_dataset(dataset, root, train=False, download=True)
        return True
    except Exception:  # any network or checksum failure means "not available"
        return False
    finally:
        socket.setdefaulttimeout(previous)


_LAYOUT_FILES = {
    "cifar10": "the folder cifar-10-batches-py (from cifar-10-python.tar.gz)",
    "cifar100": "the folder cifar-100-python (from cifar-100-python.tar.gz)",
    "svhn": "the files train_32x32.mat and test_32x32.mat",
}


def _missing_message(dataset: str, tried: list[Path]) -> str:
    where = ", ".join(str(p) for p in tried)
    files = _LAYOUT_FILES.get(dataset) or "the four files " + ", ".join(
        f"{n}.gz" for n in MNIST_FILES)
    hint = ""
    if dataset == "fashion-mnist":
        hint = " or install them with `apt-get install dataset-fashion-mnist`,"
    return (
        f"{dataset} not found (looked in: {where}; the download failed). Put {files} in a "
        f"folder and pass --data-dir DIR or set HPSEARCH_DATA,{hint} or run where the network "
        "allows the download."
    )


def _cached_tensors(dataset: str, train: bool, sources: list[Path],
                    load: Callable[[], tuple[torch.Tensor, torch.Tensor]]
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """`load()`'s tensors, saved once in our cache and read back from there afterwards.

    Importing torchvision and parsing the files costs each worker process ~1.5 s of start-up;
    the saved uint8 tensors load in ~0.05 s. The file name is keyed by the source files, so
    replacing them invalidates the copy. A cache that cannot be read or written costs
    start-up time, nothing else."""
    split = "train" if train else "test"
    key = _source_key((dataset, split), sources)
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
                               lambda: _read_named(dataset, folder, train))
    download_root = cache_dir() / "downloads"
    if download and _try_download(dataset, download_root):
        _warn_passed_over(dataset, given)
        return load_raw(dataset, str(download_root), train, download=False)
    raise DataNotFoundError(_missing_message(dataset, candidate_dirs(dataset, data_dir)))


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
