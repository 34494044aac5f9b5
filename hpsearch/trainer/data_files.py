"""Where a run's dataset files are, and how many images they hold, without torch.

trainer/data.py reads the files it finds here; the hours budget (search/hours.py, in the
torch-free launcher) prices its plan from the image counts of those same files, which the IDX
headers give without reading the images.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

from hpsearch.errors import ConfigError
from hpsearch.params import DataOptions
from hpsearch.paths import cache_dir

DEBIAN_DIRS = {
    "fashion-mnist": Path("/usr/share/datasets/fashion-mnist"),
    "mnist": Path("/usr/share/datasets/mnist"),
}
MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
IDX_DATASETS = ("fashion-mnist", "mnist", "kmnist")  # stored as MNIST_FILES
# torchvision's class for each dataset known by name; an IDX dataset's folder is named so too
TORCHVISION_NAMES = {
    "fashion-mnist": "FashionMNIST", "mnist": "MNIST", "kmnist": "KMNIST",
    "cifar10": "CIFAR10", "cifar100": "CIFAR100", "svhn": "SVHN",
}
# the other named datasets torchvision reads in its own layout: what a folder must hold
LAYOUTS = {
    "cifar10": ("cifar-10-batches-py",), "cifar100": ("cifar-100-python",),
    "svhn": ("train_32x32.mat", "test_32x32.mat"),
}


class DataError(ConfigError):
    """Dataset files that are there but cannot be read (truncated, corrupt, malformed)."""


class DataNotFoundError(ConfigError):
    """No copy of the dataset could be found or downloaded."""


def given_dirs(data_dir: str | None) -> list[Path]:
    """The folders the user named: --data-dir (or the study's data_dir), $HPSEARCH_DATA."""
    dirs = [Path(data_dir)] if data_dir else []
    if os.environ.get("HPSEARCH_DATA"):
        dirs.append(Path(os.environ["HPSEARCH_DATA"]))
    return dirs


def candidate_dirs(dataset: str, data_dir: str | None) -> list[Path]:
    """Where to look, in order: --data-dir, $HPSEARCH_DATA, Debian's package, our cache."""
    dirs = given_dirs(data_dir)
    if dataset in DEBIAN_DIRS:
        dirs.append(DEBIAN_DIRS[dataset])
    dirs.append(cache_dir() / "downloads")
    return dirs


def find_idx_files(dataset: str, root: Path) -> Path | None:
    """A folder holding the four MNIST-format files (plain or .gz), in any of the usual layouts."""
    for folder in (root, root / dataset, root / TORCHVISION_NAMES[dataset] / "raw"):
        if all((folder / n).exists() or (folder / f"{n}.gz").exists() for n in MNIST_FILES):
            return folder
    return None


def find_layout(dataset: str, root: Path) -> Path | None:
    """The folder, ROOT or ROOT/<dataset>, holding a dataset of LAYOUTS as torchvision reads it."""
    for base in (root, root / dataset):
        if all((base / name).exists() for name in LAYOUTS[dataset]):
            return base
    return None


def find_dataset(dataset: str, data_dir: str | None) -> tuple[int, Path] | None:
    """Where trainer/data.py reads `dataset` (known by name) from: the first place of
    candidate_dirs that holds it, as (its position there, the folder); None: no copy here
    (a download may bring one)."""
    for position, root in enumerate(candidate_dirs(dataset, data_dir)):
        found = (find_layout(dataset, root) if dataset in LAYOUTS
                 else find_idx_files(dataset, root))
        if found is not None:
            return position, found
    return None


def missing_here(data: DataOptions) -> bool:
    """A dataset known by name of which no copy is here: a run downloads it (or fails) before
    it writes anything, not each of its workers after the study is made."""
    return data.dataset in TORCHVISION_NAMES and find_dataset(data.dataset,
                                                              data.data_dir) is None


def layout_sources(base: Path, dataset: str) -> list[Path]:
    """The files a dataset of LAYOUTS is read from (a folder's: every file in it)."""
    found: list[Path] = []
    for name in LAYOUTS[dataset]:
        path = base / name
        found += sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    return found


def idx_sources(folder: Path, names: tuple[str, ...] = MNIST_FILES) -> list[Path]:
    """The MNIST-format files `names` in `folder`, plain or .gz, as found there."""
    return [folder / n if (folder / n).exists() else folder / f"{n}.gz" for n in names]


def idx_count(path: Path) -> int:
    """The number of items an IDX file holds, from its header (magic, then the count as a
    big-endian uint32); a .gz is decompressed only as far as the header."""
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as file:
            header = file.read(8)
        if len(header) < 8:
            raise EOFError("shorter than an IDX header")
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read the header of dataset file {path}: {exc}") from exc
    return struct.unpack(">I", header[4:])[0]


def idx_sizes(data: DataOptions) -> tuple[int, int] | None:
    """The (training, test) set sizes of the MNIST-format files a run of `data` reads, the
    folder chosen as trainer/data.py chooses it; None where the dataset's usual sizes hold
    (other datasets, or no folder here: a download brings the usual files)."""
    if data.dataset not in IDX_DATASETS:
        return None
    found = find_dataset(data.dataset, data.data_dir)
    if found is None:
        return None
    train, test = idx_sources(found[1], (MNIST_FILES[0], MNIST_FILES[2]))
    return idx_count(train), idx_count(test)
