"""Datasets known by name (Fashion-MNIST, MNIST, KMNIST, CIFAR-10/100, SVHN) read from
the files data_files.py finds, or downloaded where the network allows: their splits as uint8
tensors, and one DataError line for whatever is wrong with their files."""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import socket
import tempfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from hpsearch.errors import HpsearchError
from hpsearch.files import atomic_write
from hpsearch.masking import one_line
from hpsearch.paths import cache_dir
from hpsearch.trainer.data_files import (
    LAYOUTS,
    MNIST_FILES,
    TORCHVISION_NAMES,
    DataError,
    idx_sources,
)

if TYPE_CHECKING:
    from torchvision.datasets import VisionDataset

DOWNLOAD_TIMEOUT_S = 10.0
CACHE_FORMAT = 1  # part of every cache key: bump it when what the cache stores changes
log = logging.getLogger(__name__)


class _CacheUnwritable(Exception):
    """Our cache folder cannot be created or written."""


def source_key(parts: tuple, sources: list[Path]) -> str:
    """A name for what our cache derives from `sources`: any change to their paths, sizes or
    modification times (or to CACHE_FORMAT) gives a new name, so a stale copy is never read."""
    stats = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in sources]
    return hashlib.sha256(repr((CACHE_FORMAT, parts, stats)).encode()).hexdigest()[:16]


def torchvision_root(dataset: str, folder: Path, cache: Path) -> Path:
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
    root = cache / f"{dataset}-{source_key((dataset,), sources)}"
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
        root = torchvision_root(dataset, folder, cache_dir() / "torchvision")
    except _CacheUnwritable as exc:
        log.warning("dataset cache cannot be written (%s); unpacking into a temporary "
                    "folder", exc)
        with tempfile.TemporaryDirectory(prefix="hpsearch-data-") as tmp:
            return load_torchvision(dataset, torchvision_root(dataset, folder, Path(tmp)),
                                     train)
    return load_torchvision(dataset, root, train)


def read_named(dataset: str, folder: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A split of a dataset known by name from the folder it was found in. Whatever is wrong
    with its files (one missing, not the published one, damaged, images and labels of two
    counts) is one DataError naming the folder, never torchvision's own error (CIFAR's and
    SVHN's say 'Dataset not found or corrupted. You can use download=True')."""
    try:
        images, labels = (load_torchvision(dataset, folder, train) if dataset in LAYOUTS
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


def load_torchvision(dataset: str, root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    ds = _torchvision_dataset(dataset, root, train, download=False)
    images = torch.as_tensor(ds.data)  # MNIST's (N, H, W), CIFAR's (N, H, W, C), SVHN's NCHW
    if images.dim() == 3:
        images = images.unsqueeze(1)
    elif dataset.startswith("cifar"):
        images = images.permute(0, 3, 1, 2)
    labels = ds.labels if dataset == "svhn" else ds.targets
    return images.contiguous(), torch.as_tensor(labels).long()


def try_download(dataset: str, root: Path) -> bool:
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


def missing_message(dataset: str, tried: list[Path]) -> str:
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
