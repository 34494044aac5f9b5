"""Datasets beyond Fashion-MNIST, MNIST and CIFAR-10: KMNIST, CIFAR-100 and SVHN by name, an
image folder and a .npz file by path. No real dataset is read: each test writes tiny files in
the dataset's format."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hpsearch.errors import ConfigError
from hpsearch.params import DataOptions, DatasetFacts, TrialParams
from hpsearch.trainer.data import load_full_train, load_raw, load_test_split, load_train_val
from hpsearch.trainer.data_files import MNIST_FILES, DataError, DataNotFoundError
from hpsearch.trainer.data_sources import dataset_facts, dataset_sizes
from hpsearch.trainer.model import build_model
from tests.helpers import idx_images, idx_labels

CLASSES = ("ant", "bee", "cat")
PER_CLASS = {"train": 4, "test": 2}


def class_pixels(label: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """A class's brightness plus noise, so that the classes can be told apart."""
    noise = np.random.default_rng(seed).integers(0, 40, shape)
    return (40 + 80 * label + noise).astype(np.uint8)


def write_folder(root: Path, mode: str = "RGB", size: tuple[int, int] = (8, 6),
                 per_class: dict[str, int] = PER_CLASS) -> dict[str, list[np.ndarray]]:
    """root/train/<class>/*.png and root/test/<class>/*.png, `size` (width, height); the
    pixels written, per split, in the order of the classes and file names."""
    width, height = size
    shape = (height, width) if mode == "L" else (height, width, 3)
    written: dict[str, list[np.ndarray]] = {}
    for split, count in per_class.items():
        written[split] = []
        for label, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = class_pixels(label, shape, seed=len(written[split]))
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
                written[split].append(pixels)
    return written


def write_npz(path: Path, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
              y_test: np.ndarray) -> Path:
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


def npz_arrays(n: int, layout: str) -> tuple[np.ndarray, np.ndarray]:
    """n images of 3 classes in `layout` ("NHW", "NHWC" or "NCHW") and their labels."""
    labels = np.arange(n) % 3
    shape = {"NHW": (10, 12), "NHWC": (10, 12, 3), "NCHW": (3, 10, 12)}[layout]
    images = np.stack([class_pixels(int(k), shape, seed=i) for i, k in enumerate(labels)])
    return images, labels


# --------------------------------------------------------------------------------------------
# an image folder
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("mode", "channels"), [("RGB", 3), ("L", 1)])
def test_an_image_folder_is_read_with_its_shape_classes_and_sizes(
        isolated: Path, mode: str, channels: int) -> None:
    root = isolated / "photos"
    written = write_folder(root, mode)
    options = DataOptions(dataset=str(root), val_fraction=0.25)
    assert dataset_facts(options) == DatasetFacts((channels, 6, 8), 3, 12, 6)
    assert dataset_sizes(options) == (12, 6)  # what an hours budget prices

    images, labels = load_raw(str(root), None, train=False)
    expected = np.stack(written["test"])
    expected = expected[:, None] if mode == "L" else expected.transpose(0, 3, 1, 2)
    assert torch.equal(images, torch.from_numpy(expected))
    assert labels.tolist() == [0, 0, 1, 1, 2, 2]  # classes in sorted folder order

    data = load_train_val(options, seed=0)
    assert (len(data.train), len(data.val)) == (9, 3)
    assert data.image_shape == (channels, 6, 8) and data.num_classes == 3
    full = load_full_train(options)
    assert full.num_classes == 3 and len(load_test_split(options, full.mean, full.std)) == 6
    # the built-in models are built for the data's shape and class count
    logits = build_model(TrialParams(model="mlp"), data.image_shape, data.num_classes)(
        data.train.images[:2])
    assert logits.shape == (2, 3)


def _no_test_folder(root: Path) -> None:
    for image in (root / "test").rglob("*.png"):
        image.unlink()
    for folder in sorted((root / "test").iterdir()):
        folder.rmdir()
    (root / "test").rmdir()


def _odd_size(root: Path) -> None:
    Image.new("RGB", (5, 5)).save(root / "train" / "bee" / "9.png")


def _stray_class(root: Path) -> None:
    (root / "test" / "dog").mkdir()
    Image.new("RGB", (8, 6)).save(root / "test" / "dog" / "0.png")


def _not_an_image(root: Path) -> None:
    (root / "train" / "ant" / "0.png").write_bytes(b"not a png")


def _one_class(root: Path) -> None:
    for split in ("train", "test"):
        for name in CLASSES[1:]:
            for image in (root / split / name).iterdir():
                image.unlink()
            (root / split / name).rmdir()


def _empty_class(root: Path) -> None:
    for image in (root / "train" / "cat").iterdir():
        image.unlink()


@pytest.mark.parametrize(("damage", "message"), [
    (_no_test_folder, "has no test/ sub-folder"),
    (_odd_size, r"bee/9.png is 5x5; every image must be 8x6"),
    (_stray_class, "test/ has class folders that train/ lacks: dog"),
    (_not_an_image, "cannot read image .*ant/0.png"),
    (_one_class, "at least 2 classes"),
    (_empty_class, "train/cat/ holds no images"),
])
def test_a_malformed_image_folder_is_one_line(isolated: Path, damage, message: str) -> None:
    root = isolated / "photos"
    write_folder(root)
    damage(root)
    with pytest.raises(DataError, match=message) as error:
        load_train_val(DataOptions(dataset=str(root)), seed=0)
    assert "\n" not in str(error.value)


def test_hidden_files_and_folders_are_not_data(isolated: Path) -> None:
    """What Jupyter, macOS and editors leave in a folder: before, `.ipynb_checkpoints` was a
    class ("holds no images") and macOS's `._0.png` an image that cannot be read."""
    root = isolated / "photos"
    written = write_folder(root)
    for split in ("train", "test"):
        (root / split / ".ipynb_checkpoints").mkdir()
    (root / "train" / "ant" / "._0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (root / "train" / "bee" / ".thumbs").mkdir()
    Image.new("RGB", (4, 4)).save(root / "train" / "bee" / ".thumbs" / "0.png")
    assert dataset_facts(DataOptions(dataset=str(root))) == DatasetFacts((3, 6, 8), 3, 12, 6)
    images, _ = load_raw(str(root), None, train=True)
    assert torch.equal(images, torch.from_numpy(np.stack(written["train"]).transpose(0, 3, 1, 2)))


def test_16_bit_greyscale_images_are_greyscale_and_never_clipped(isolated: Path) -> None:
    """16-bit PNGs (Pillow's mode I;16): before, read as 3 channels with every value over
    255 clipped to 255 (a real 16-bit image turned white). Now one channel, the values as a
    .npz file's are taken: integers 0-255 as they are, larger ones refused in one line."""
    root = isolated / "photos"
    written = write_folder(root, "L")
    for image in root.rglob("*.png"):
        Image.fromarray(np.asarray(Image.open(image)).astype(np.uint16)).save(image)
    assert Image.open(image).mode == "I;16"
    options = DataOptions(dataset=str(root))
    assert dataset_facts(options).shape == (1, 6, 8)
    images, _ = load_raw(str(root), None, train=False)
    assert torch.equal(images, torch.from_numpy(np.stack(written["test"])[:, None]))

    Image.fromarray(np.full((6, 8), 60000, np.uint16)).save(root / "train" / "bee" / "0.png")
    with pytest.raises(DataError, match=r"bee/0.png: the image holds uint16 values from 60000 "
                                        r"to 60000; expected uint8 pixels \(0-255\)"):
        load_raw(str(root), None, train=True)


# --------------------------------------------------------------------------------------------
# a .npz file
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["NHW", "NHWC", "NCHW"])
def test_a_npz_file_is_read_in_each_layout(isolated: Path, layout: str) -> None:
    x_train, y_train = npz_arrays(12, layout)
    x_test, y_test = npz_arrays(6, layout)
    path = write_npz(isolated / "arrays.npz", x_train, y_train[:, None], x_test, y_test)
    channels = 1 if layout == "NHW" else 3
    options = DataOptions(dataset=str(path), val_fraction=0.25)
    assert dataset_facts(options) == DatasetFacts((channels, 10, 12), 3, 12, 6)

    images, labels = load_raw(str(path), None, train=False)
    expected = (x_test[:, None] if layout == "NHW" else x_test.transpose(0, 3, 1, 2)
                if layout == "NHWC" else x_test)
    assert torch.equal(images, torch.from_numpy(np.ascontiguousarray(expected)))
    assert labels.tolist() == y_test.tolist()
    data = load_train_val(options, seed=0)
    assert data.image_shape == (channels, 10, 12) and data.num_classes == 3


def test_npz_floats_in_0_1_are_pixels(isolated: Path) -> None:
    x, y = npz_arrays(6, "NHW")
    path = write_npz(isolated / "floats.npz", x / 255.0, y, x / 255.0, y)
    images, _ = load_raw(str(path), None, train=True)
    assert torch.equal(images[:, 0], torch.from_numpy(x))


@pytest.mark.parametrize(("arrays", "message"), [
    ({"x_test": None}, r"^\S+bad.npz lacks the array\(s\) x_test"),
    ({"y_test": np.array([None] * 6)}, "y_test holds Python objects"),
    ({"y_train": np.zeros(5, int)}, r"y_train has shape \(5,\); expected \(6,\)"),
    ({"y_train": np.full(6, 0.5)}, "y_train must hold integer class labels"),
    ({"x_train": np.full((6, 10, 12), 300)}, "x_train holds int64 values from 300 to 300"),
    ({"x_test": np.zeros((6, 5, 5), np.uint8)}, "both must have one shape"),
    ({"x_train": np.zeros((6, 2, 3, 4, 5), np.uint8)}, "x_train has shape"),
    ({"y_test": np.full(6, 7)}, "y_test has label 7; y_train's are 0..2"),
    # before: an unexpected UFuncTypeError
    ({"y_train": np.array(list("abcabc"))},
     r"y_train must hold integer class labels .*\(got <U1\)$"),
    # before: read as 4 and 6 classes, the model given outputs for classes with no image
    ({"y_train": np.arange(6) % 3 + 1}, r"y_train has no label 0 \(its labels are 1\.\.3\); "
                                        r"labels must be 0\.\.K-1, each class with training"),
    ({"y_train": np.arange(6) % 3 * 2}, r"y_train has no label 1, 3 \(its labels are 0\.\.4\)"),
    ({"x_train": np.zeros((0, 10, 12), np.uint8), "y_train": np.zeros(0, int)},
     "y_train holds no labels"),
])
def test_a_malformed_npz_file_is_one_line(isolated: Path, arrays: dict, message: str) -> None:
    x, y = npz_arrays(6, "NHW")
    contents = {"x_train": x, "y_train": y, "x_test": x, "y_test": y, **arrays}
    path = isolated / "bad.npz"
    np.savez(path, **{k: v for k, v in contents.items() if v is not None})
    with pytest.raises(DataError, match=message) as error:
        for train in (True, False):
            load_raw(str(path), None, train)
    assert "\n" not in str(error.value)


def test_a_test_label_outside_the_training_classes_is_found_when_the_study_is_read(
        isolated: Path) -> None:
    """As an image folder's stray test/ class is: not at the final evaluation, hours later."""
    x, y = npz_arrays(6, "NHW")
    path = write_npz(isolated / "labels.npz", x, y, x, np.full(6, 7))
    with pytest.raises(DataError, match="y_test has label 7; y_train's are 0..2"):
        dataset_facts(DataOptions(dataset=str(path)))
    # a file with an empty test set (a search that never tests) is read as before
    empty = write_npz(isolated / "empty.npz", x, y, x[:0], y[:0])
    assert dataset_facts(DataOptions(dataset=str(empty))).sizes == (6, 0)


def test_a_file_that_is_no_npz_is_one_line(isolated: Path) -> None:
    path = isolated / "broken.npz"
    path.write_bytes(b"not a zip file")
    with pytest.raises(DataError, match="cannot read .*broken.npz as a .npz file"):
        dataset_facts(DataOptions(dataset=str(path)))


def test_an_unknown_dataset_names_the_known_ones_and_the_paths(isolated: Path) -> None:
    with pytest.raises(DataNotFoundError) as error:
        load_train_val(DataOptions(dataset="kmnst"), seed=0)
    assert str(error.value) == (
        "unknown dataset 'kmnst' (known: fashion-mnist, mnist, kmnist, cifar10, cifar100, svhn, "
        "synthetic; or the path of an image folder or of a .npz file): no such folder or .npz "
        "file")
    assert isinstance(error.value, ConfigError)


# --------------------------------------------------------------------------------------------
# torchvision's datasets by name, in their own formats
# --------------------------------------------------------------------------------------------

@pytest.fixture
def no_checksums(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchvision checks CIFAR's and SVHN's files against the published checksums, which
    tiny test files cannot match."""
    from torchvision.datasets import cifar, svhn

    for module in (cifar, svhn):
        monkeypatch.setattr(module, "check_integrity", lambda *args, **kwargs: True)


def test_kmnist_is_read_from_its_idx_files(isolated: Path) -> None:
    folder = isolated / "data" / "KMNIST" / "raw"  # torchvision's layout
    folder.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    for prefix, n in (("train", 20), ("t10k", 8)):
        images = torch.randint(0, 256, (n, 28, 28), generator=gen, dtype=torch.uint8)
        labels = torch.arange(n) % 10
        with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as file:
            file.write(idx_images(images))
        with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as file:
            file.write(idx_labels(labels))
    assert set(MNIST_FILES) == {p.name.removesuffix(".gz") for p in folder.iterdir()}
    options = DataOptions(dataset="kmnist", data_dir=str(isolated / "data"), val_fraction=0.25)
    assert dataset_sizes(options) == (20, 8)
    data = load_train_val(options, seed=0)
    assert data.image_shape == (1, 28, 28) and data.num_classes == 10


def test_cifar100_is_read_with_its_100_classes(isolated: Path, no_checksums: None) -> None:
    folder = isolated / "data" / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in (("train", 30), ("test", 10)):
        batch = {"data": rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8),
                 "fine_labels": [(7 * i) % 100 for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [str(i) for i in range(100)]}))
    options = DataOptions(dataset="cifar100", data_dir=str(isolated / "data"), val_fraction=0.2)
    images, labels = load_raw("cifar100", options.data_dir, train=False)
    first = batch["data"][0].reshape(3, 32, 32)
    assert torch.equal(images[0], torch.from_numpy(first)) and labels[1] == 7
    data = load_train_val(options, seed=0)
    assert data.image_shape == (3, 32, 32) and data.num_classes == 100


def test_svhn_is_read_with_its_zeros_labelled_0(isolated: Path, no_checksums: None) -> None:
    from scipy.io import savemat

    folder = isolated / "data" / "svhn"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 20), ("test", 10)):
        digits = np.arange(1, n + 1) % 10
        savemat(folder / f"{split}_32x32.mat", {
            "X": rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8),
            "y": np.where(digits == 0, 10, digits)[:, None]})  # SVHN writes 0 as 10
    options = DataOptions(dataset="svhn", data_dir=str(isolated / "data"), val_fraction=0.2)
    _, labels = load_raw("svhn", options.data_dir, train=False)
    assert labels.tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0]
    data = load_train_val(options, seed=0)
    assert data.image_shape == (3, 32, 32) and data.num_classes == 10


def write_cifar10(folder: Path, n: int = 4) -> Path:
    """cifar-10-batches-py as the published archive unpacks it (tiny batches)."""
    base = folder / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8),
                 "labels": [i % 10 for i in range(n)]}
        (base / name).write_bytes(pickle.dumps(batch))
    (base / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(i) for i in range(10)]}))
    return base


def write_mnist(folder: Path, n_images: int = 20, n_labels: int = 20) -> Path:
    folder.mkdir(parents=True)
    for prefix, n in (("train", n_images), ("t10k", 8)):
        with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as file:
            file.write(idx_images(torch.zeros((n, 28, 28), dtype=torch.uint8)))
        with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as file:
            file.write(idx_labels(torch.arange(n_labels if prefix == "train" else n) % 10))
    return folder


def _cifar_batch_missing(data: Path) -> str:
    (write_cifar10(data) / "data_batch_3").unlink()
    return "cifar10"


def _cifar_of_another_source(data: Path) -> str:
    write_cifar10(data)  # files of the right form that are not the published ones
    return "cifar10"


def _mnist_labels_short(data: Path) -> str:
    write_mnist(data, n_images=20, n_labels=15)
    return "mnist"


def _mnist_not_gzip(data: Path) -> str:
    (write_mnist(data) / "train-labels-idx1-ubyte.gz").write_bytes(b"not gzip data")
    return "mnist"


@pytest.mark.parametrize(("damage", "message"), [
    (_cifar_batch_missing, r"^cannot read the cifar10 files in \S+/data: "
                           r"cifar-10-batches-py/data_batch_3 is missing"),
    (_cifar_of_another_source, r"^cannot read the cifar10 files in \S+/data: "
                               r"cifar-10-batches-py/data_batch_1 is not the published file "
                               r"\(its MD5 checksum differs"),
    (_mnist_labels_short, r"^cannot read the mnist files in \S+/data: 20 images but 15 labels"),
    (_mnist_not_gzip, r"^cannot unpack dataset file \S+/train-labels-idx1-ubyte.gz into \S+: "
                      r"Not a gzipped file"),
])
def test_damaged_files_of_a_dataset_known_by_name_are_one_line_naming_them(
        isolated: Path, damage, message: str) -> None:
    """Before: torchvision's `RuntimeError: Dataset not found or corrupted. You can use
    download=True to download it` (unexpected, and no download is meant), a training set
    silently cut to its labels' count, and a file that is no gzip reported as 'cannot write
    ...: None'."""
    dataset = damage(isolated / "data")
    with pytest.raises(DataError, match=message) as error:
        for train in (True, False):
            load_raw(dataset, str(isolated / "data"), train)
    assert "\n" not in str(error.value) and "cannot write" not in str(error.value)
