"""What a run's dataset is and holds, without torch: the facts (image shape, class count, set
sizes) of any [data] dataset, and the arrays of a dataset of the user's own.

A dataset known by name (params.DATASETS) has its published facts, its set sizes counted in
its files where they are here (data_files.py). Any other name is a path, of

- an image folder: train/ and test/, each with one sub-folder of images per class (the classes
  are train/'s sub-folders, sorted by name, as torchvision's ImageFolder orders them; hidden
  files and folders, named ".*", are not data). Every
  image must have the first one's size; the first one's mode decides the channels (greyscale,
  8-bit or more: 1, any other: 3, every image converted to RGB); a 16- or 32-bit image's
  values are taken as a .npz file's are;
- a .npz file of the arrays x_train, y_train, x_test, y_test: images (N, H, W),
  (N, H, W, C) or (N, C, H, W) with C 1 or 3, uint8 or floats in [0, 1]; labels the integers
  0..K-1 (K, the class count, is one more than y_train's largest label).

numpy and Pillow are imported only where a folder or .npz file is read.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from hpsearch.params import (
    DATASETS,
    NUM_CLASSES,
    SYNTHETIC_SHAPE,
    DataOptions,
    DatasetFacts,
    unknown_dataset,
)
from hpsearch.trainer.data_files import DataError, DataNotFoundError, idx_sizes

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

IMAGE_SUFFIXES = (".bmp", ".gif", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif", ".tiff",
                  ".webp")
SPLITS = ("train", "test")
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def is_local(dataset: str) -> bool:
    """A path (an image folder or a .npz file), not a dataset known by name."""
    return dataset != "synthetic" and dataset not in DATASETS


def dataset_facts(data: DataOptions) -> DatasetFacts:
    """The image shape, class count and (training, test) set sizes of `data`'s dataset: as
    published for one known by name (nothing is read), from the files for a folder or .npz
    file. DataNotFoundError or DataError, one line, for a path that is neither, or one that is
    malformed."""
    if data.dataset == "synthetic":
        return DatasetFacts(SYNTHETIC_SHAPE, NUM_CLASSES, *data.usual_sizes())
    if not is_local(data.dataset):
        return DATASETS[data.dataset]
    path = local_path(data.dataset)
    return _npz_facts(path) if path.suffix == ".npz" else _folder_facts(path)


def dataset_sizes(data: DataOptions) -> tuple[int, int]:
    """The (training, test) set sizes of the files a run of `data` reads (a data folder may
    hold fewer images than the dataset as published): what an hours budget prices."""
    return (idx_sizes(data) if not is_local(data.dataset) else None
            ) or dataset_facts(data).sizes


def local_path(dataset: str) -> Path:
    """The image folder or .npz file a dataset names (relative to the directory hpsearch runs
    in)."""
    path = Path(dataset).expanduser()
    if path.is_dir() or (path.suffix == ".npz" and path.is_file()):
        return path
    raise DataNotFoundError(f"{unknown_dataset(dataset)}: no such folder or .npz file")


def read_local(path: Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, C, H, W) and int64 labels of a folder's or .npz file's split."""
    return _read_npz(path, train) if path.suffix == ".npz" else _read_folder(path, train)


class FolderListing(NamedTuple):
    classes: list[str]
    images: dict[str, list[tuple[Path, int]]]  # split: (image file, class index), in order


def folder_listing(root: Path) -> FolderListing:
    for split in SPLITS:
        if not (root / split).is_dir():
            raise DataError(f"image folder {root} has no {split}/ sub-folder (expected train/ "
                            "and test/, each with one folder of images per class)")
    classes = sorted(p.name for p in (root / "train").iterdir() if _shown(p) and p.is_dir())
    stray = sorted(p.name for p in (root / "test").iterdir()
                   if _shown(p) and p.is_dir() and p.name not in classes)
    if stray:
        raise DataError(f"image folder {root}: test/ has class folders that train/ lacks: "
                        f"{', '.join(stray)}")
    images: dict[str, list[tuple[Path, int]]] = {}
    for split in SPLITS:
        images[split] = []
        for index, name in enumerate(classes):
            folder = root / split / name
            found = sorted(p for p in folder.rglob("*")
                           if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                           and _shown(p, within=folder))
            if split == "train" and not found:
                raise DataError(f"image folder {root}: train/{name}/ holds no images "
                                f"({', '.join(IMAGE_SUFFIXES)})")
            images[split] += [(path, index) for path in found]
    if len(classes) < 2 or not images["test"]:
        raise DataError(f"image folder {root}: {len(classes)} class folder(s) in train/ and "
                        f"{len(images['test'])} images in test/; a classifier needs at least "
                        "2 classes and a test set")
    return FolderListing(classes, images)


def _shown(path: Path, within: Path | None = None) -> bool:
    """Not hidden (no name from `within` down starts with "."): Jupyter's .ipynb_checkpoints,
    macOS's ._* and .DS_Store files are not data."""
    parts = path.relative_to(within).parts if within else (path.name,)
    return not any(part.startswith(".") for part in parts)


def _image_header(path: Path) -> tuple[int, tuple[int, int]]:
    """(channels, (width, height)) of an image, from its header."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return _channels(image.mode), image.size
    except OSError as exc:  # PIL's UnidentifiedImageError is an OSError
        raise DataError(f"cannot read image {path}: {exc}") from None


def _channels(mode: str) -> int:
    """1 for a greyscale mode (Pillow's "1", "L", "LA", and 16- and 32-bit "I;16", "I", "F"),
    else 3."""
    from PIL import Image

    return 1 if Image.getmodebase(mode) == "L" else 3


def _pixels(path: Path, image: Image.Image, channels: int) -> np.ndarray:
    """An image's pixels, (H, W) or (H, W, 3) uint8. A 16- or 32-bit image (modes "I;16",
    "I", "F") has its values checked as a .npz file's are, where Pillow's convert would clip
    every one over 255."""
    import numpy as np
    from PIL import Image

    if image.mode in ("I", "F") or image.mode.startswith("I;"):
        image = Image.fromarray(_as_uint8(path, "the image", np.asarray(image)))
    return np.asarray(image.convert("L" if channels == 1 else "RGB"))


def _folder_facts(root: Path) -> DatasetFacts:
    listing = folder_listing(root)
    channels, (width, height) = _image_header(listing.images["train"][0][0])
    return DatasetFacts((channels, height, width), len(listing.classes),
                        len(listing.images["train"]), len(listing.images["test"]))


def _read_folder(root: Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
    import numpy as np
    from PIL import Image

    listing = folder_listing(root)
    first = listing.images["train"][0][0]
    channels, size = _image_header(first)
    items = listing.images["train" if train else "test"]
    images = np.empty((len(items), channels, size[1], size[0]), np.uint8)
    for i, (path, _) in enumerate(items):
        try:
            with Image.open(path) as image:
                if image.size != size:
                    raise DataError(f"image {path} is {image.size[0]}x{image.size[1]}; every "
                                    f"image must be {size[0]}x{size[1]}, as {first} is")
                pixels = _pixels(path, image, channels)
        except OSError as exc:
            raise DataError(f"cannot read image {path}: {exc}") from None
        images[i] = pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)
    return images, np.array([label for _, label in items], dtype=np.int64)


def _npz_headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Each array's shape and dtype, from its header (nothing else is read)."""
    import numpy as np

    headers = {}
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            for key in NPZ_KEYS:
                if f"{key}.npy" not in names:
                    continue
                with archive.open(f"{key}.npy") as file:
                    version = np.lib.format.read_magic(file)
                    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                            else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = read(file)
                    headers[key] = (shape, dtype)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"cannot read {path} as a .npz file: {exc}") from None
    missing = [key for key in NPZ_KEYS if key not in headers]
    if missing:
        raise DataError(f"{path} lacks the array(s) {', '.join(missing)} (a .npz dataset "
                        f"holds {', '.join(NPZ_KEYS)})")
    objects = [key for key, (_, dtype) in headers.items() if dtype.hasobject]
    if objects:  # numpy would have to unpickle them
        raise DataError(f"{path}: {', '.join(objects)} holds Python objects; expected arrays "
                        "of numbers")
    return headers


def _image_shape(path: Path, key: str, shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(shape) == 3:
        return 1, shape[1], shape[2]
    if len(shape) == 4 and shape[3] in (1, 3):
        return shape[3], shape[1], shape[2]
    if len(shape) == 4 and shape[1] in (1, 3):
        return shape[1], shape[2], shape[3]
    raise DataError(f"{path}: {key} has shape {shape}; expected images (N, H, W), "
                    "(N, H, W, C) or (N, C, H, W) with C 1 or 3")


def _npz_facts(path: Path) -> DatasetFacts:
    import numpy as np

    headers = _npz_headers(path)
    shapes = {split: _image_shape(path, f"x_{split}", headers[f"x_{split}"][0])
              for split in SPLITS}
    if shapes["train"] != shapes["test"]:
        raise DataError(f"{path}: x_train's images are {shapes['train']}, x_test's "
                        f"{shapes['test']}; both must have one shape (C, H, W)")
    counts = {}
    for split in SPLITS:
        (n, *_), (labels, _) = headers[f"x_{split}"][0], headers[f"y_{split}"]
        if labels not in ((n,), (n, 1)):
            raise DataError(f"{path}: y_{split} has shape {labels}; expected ({n},), one "
                            f"label per image of x_{split}")
        counts[split] = n
    with np.load(path) as arrays:
        train_labels = _labels(path, "train", arrays["y_train"])
        classes = int(train_labels.max()) + 1
        # as an image folder's empty class is refused: labels 1..K (or with gaps) would give
        # the model outputs for classes that have no image
        unused = np.setdiff1d(np.arange(classes), train_labels)
        if unused.size:
            named = ", ".join(str(k) for k in unused[:5]) + (", ..." if unused.size > 5 else "")
            raise DataError(f"{path}: y_train has no label {named} (its labels are "
                            f"{train_labels.min()}..{classes - 1}); labels must be 0..K-1, "
                            "each class with training images")
        # the test labels too, as an image folder's test/ class names are: a label outside
        # the training classes would fail the final evaluation, hours after the search began
        highest = _labels(path, "test", arrays["y_test"]).max() if counts["test"] else -1
    if highest >= classes:
        raise DataError(f"{path}: y_test has label {highest}; y_train's are 0..{classes - 1}")
    return DatasetFacts(shapes["train"], classes, counts["train"], counts["test"])


def _labels(path: Path, split: str, labels: np.ndarray) -> np.ndarray:
    import numpy as np

    labels = labels.reshape(-1)
    if labels.size == 0:
        raise DataError(f"{path}: y_{split} holds no labels")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
        low = f", min {labels.min()}" if np.issubdtype(labels.dtype, np.number) else ""
        raise DataError(f"{path}: y_{split} must hold integer class labels 0, 1, 2, ... "
                        f"(got {labels.dtype}{low})")
    return labels.astype(np.int64)


def _read_npz(path: Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
    import numpy as np

    _npz_facts(path)  # every check of the file's form
    split = "train" if train else "test"
    with np.load(path) as arrays:
        images, labels = arrays[f"x_{split}"], _labels(path, split, arrays[f"y_{split}"])
    if images.ndim == 3:
        images = images[:, None]
    elif images.shape[3] in (1, 3):  # channels last, as _image_shape reads it
        images = images.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(_as_uint8(path, f"x_{split}", images)), labels


def _as_uint8(path: Path, key: str, images: np.ndarray) -> np.ndarray:
    """Pixels as uint8 0..255: uint8 as they are, other integers in 0..255, floats in [0, 1]
    scaled to 0..255."""
    import numpy as np

    if images.dtype == np.uint8:
        return images
    low, high = (images.min(), images.max()) if images.size else (0, 0)
    if np.issubdtype(images.dtype, np.integer) and low >= 0 and high <= 255:
        return images.astype(np.uint8)
    if np.issubdtype(images.dtype, np.floating) and low >= 0 and high <= 1:
        return np.rint(images * 255).astype(np.uint8)
    raise DataError(f"{path}: {key} holds {images.dtype} values from {low} to {high}; "
                    "expected uint8 pixels (0-255) or floats in [0, 1]")
