"""Data: discovery of the files, the seeded train/validation split, batches, augmentation.

No real dataset is read: discovery tests write tiny IDX files (the MNIST file format) into
tmp_path, and everything else uses the synthetic dataset.
"""

from __future__ import annotations

import gzip
import os
import time
from pathlib import Path

import pytest
import torch

from hpsearch.errors import ConfigError
from hpsearch.params import DataOptions
from hpsearch.trainer import data as data_mod
from hpsearch.trainer import named_datasets
from hpsearch.trainer.batches import Augmentation, iterate_batches
from hpsearch.trainer.data import (
    Split,
    load_full_train,
    load_raw,
    load_test_split,
    load_train_val,
    synthetic_raw,
)
from hpsearch.trainer.data_files import MNIST_FILES, DataError, DataNotFoundError
from tests.helpers import IDX_TEST, IDX_TRAIN, idx_images, idx_labels, write_idx

# --------------------------------------------------------------------------------------------
# fake IDX files and an isolated environment
# --------------------------------------------------------------------------------------------

# --------------------------------------------------------------------------------------------
# discovery
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["flat-gz", "flat-plain", "torchvision-raw", "named-subdir"])
def test_files_found_in_data_dir(isolated: Path, layout: str) -> None:
    root = isolated / "mydata"
    folder = {"flat-gz": root, "flat-plain": root, "named-subdir": root / "fashion-mnist",
              "torchvision-raw": root / "FashionMNIST" / "raw"}[layout]
    expected = write_idx(folder, gz=layout in ("flat-gz", "named-subdir"))
    for train, key, n in ((True, "train", IDX_TRAIN), (False, "t10k", IDX_TEST)):
        images, labels = load_raw("fashion-mnist", str(root), train=train, download=False)
        assert images.shape == (n, 1, 28, 28)
        assert images.dtype == torch.uint8
        assert torch.equal(images[:, 0], expected[key][0])
        assert torch.equal(labels, expected[key][1])


def test_torchvision_layout_is_used_in_place(isolated: Path) -> None:
    root = isolated / "tv"
    write_idx(root / "FashionMNIST" / "raw", gz=False)
    load_raw("fashion-mnist", str(root), train=True, download=False)
    # nothing had to be copied into the cache
    assert not (isolated / "cache" / "hpsearch" / "torchvision").exists()


def test_gz_files_are_unpacked_once_into_the_cache(isolated: Path) -> None:
    write_idx(isolated / "gz", gz=True)
    load_raw("fashion-mnist", str(isolated / "gz"), train=True, download=False)
    load_raw("fashion-mnist", str(isolated / "gz"), train=False, download=False)
    cache = isolated / "cache" / "hpsearch" / "torchvision"
    (raw,) = cache.glob("fashion-mnist-*/FashionMNIST/raw")
    assert sorted(p.name for p in raw.iterdir()) == sorted(MNIST_FILES)


def test_second_load_reads_the_cached_tensors_without_torchvision(
        isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = write_idx(isolated / "gz", gz=True)
    first = load_raw("fashion-mnist", str(isolated / "gz"), train=True, download=False)
    assert len(list((isolated / "cache" / "hpsearch" / "tensors").glob("*.pt"))) == 1

    def no_torchvision(*args: object) -> None:
        raise AssertionError("torchvision was asked to parse the files again")

    monkeypatch.setattr(named_datasets, "load_torchvision", no_torchvision)
    images, labels = load_raw("fashion-mnist", str(isolated / "gz"), train=True, download=False)
    assert torch.equal(images, first[0]) and torch.equal(labels, first[1])
    assert torch.equal(images[:, 0], expected["train"][0])


def _replace_test_split(folder: Path, mtime_ns: int) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.randint(0, 256, (IDX_TEST, 28, 28), dtype=torch.uint8)
    labels = torch.randint(0, 10, (IDX_TEST,))
    for name, payload in (("t10k-images-idx3-ubyte.gz", idx_images(images)),
                          ("t10k-labels-idx1-ubyte.gz", idx_labels(labels))):
        with gzip.open(folder / name, "wb") as f:
            f.write(payload)
        os.utime(folder / name, ns=(mtime_ns, mtime_ns))
    return images, labels


def test_replaced_files_are_parsed_again_even_with_older_times(isolated: Path) -> None:
    # unpacking an archive (tar -x, cp -p, rsync -t) gives files older than our cached copy
    write_idx(isolated / "gz", gz=True)
    load_raw("fashion-mnist", str(isolated / "gz"), train=False, download=False)
    old_time = (isolated / "gz" / "t10k-images-idx3-ubyte.gz").stat().st_mtime_ns - 10**11
    images, labels = _replace_test_split(isolated / "gz", old_time)
    got, got_labels = load_raw("fashion-mnist", str(isolated / "gz"), train=False, download=False)
    assert torch.equal(got[:, 0], images) and torch.equal(got_labels, labels)


def test_two_folders_keep_their_own_data(isolated: Path) -> None:
    first = write_idx(isolated / "a", gz=True)
    write_idx(isolated / "b", gz=True)
    second = _replace_test_split(isolated / "b", time.time_ns())
    for folder, (images, labels) in (("a", first["t10k"]), ("b", second), ("a", first["t10k"])):
        got, got_labels = load_raw("fashion-mnist", str(isolated / folder), train=False,
                                   download=False)
        assert torch.equal(got[:, 0], images) and torch.equal(got_labels, labels)


def test_unwritable_cache_only_costs_time(isolated: Path, monkeypatch: pytest.MonkeyPatch,
                                          caplog: pytest.LogCaptureFixture) -> None:
    expected = write_idx(isolated / "gz", gz=True)

    def disk_full(*args: object) -> None:
        raise RuntimeError("basic_ios::clear: iostream error")  # what torch.save raises

    monkeypatch.setattr(data_mod.torch, "save", disk_full)
    images, _ = load_raw("fashion-mnist", str(isolated / "gz"), train=True, download=False)
    assert torch.equal(images[:, 0], expected["train"][0])
    assert not list((isolated / "cache" / "hpsearch" / "tensors").iterdir())  # no leftovers
    assert "not written" in caplog.text


def test_damaged_cache_is_rebuilt(isolated: Path) -> None:
    expected = write_idx(isolated / "gz", gz=True)
    load_raw("fashion-mnist", str(isolated / "gz"), train=True, download=False)
    (cached,) = (isolated / "cache" / "hpsearch" / "tensors").glob("*.pt")
    cached.write_bytes(b"not a tensor file")
    images, _ = load_raw("fashion-mnist", str(isolated / "gz"), train=True, download=False)
    assert torch.equal(images[:, 0], expected["train"][0])
    assert torch.load(cached, weights_only=True)["images"].shape == images.shape


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_damaged_dataset_files_are_one_clear_error(isolated: Path, damage: str) -> None:
    raw = isolated / "data" / "FashionMNIST" / "raw"
    write_idx(raw, gz=False)
    for name in MNIST_FILES:
        path = raw / name
        path.write_bytes(os.urandom(100) if damage == "garbage" else path.read_bytes()[:100])
    with pytest.raises(DataError) as error:
        load_raw("fashion-mnist", str(isolated / "data"), train=True, download=False)
    message = str(error.value)
    assert message.startswith(f"cannot read the fashion-mnist files in {raw}")
    assert "(damaged or truncated? replace them)" in message
    assert "\n" not in message


def test_hpsearch_data_env_var(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = write_idx(isolated / "from-env", gz=True)
    monkeypatch.setenv("HPSEARCH_DATA", str(isolated / "from-env"))
    images, labels = load_raw("fashion-mnist", None, train=False, download=False)
    assert torch.equal(labels, expected["t10k"][1])
    assert images.shape == (IDX_TEST, 1, 28, 28)


def test_data_dir_comes_before_env_var(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_idx(isolated / "a", gz=True)
    monkeypatch.setenv("HPSEARCH_DATA", str(isolated / "b"))
    dirs = data_mod.candidate_dirs("fashion-mnist", str(isolated / "a"))
    assert dirs[:2] == [isolated / "a", isolated / "b"]
    assert dirs[-1] == isolated / "cache" / "hpsearch" / "downloads"


def test_load_train_val_from_fake_files(isolated: Path) -> None:
    write_idx(isolated / "d", gz=True)
    options = DataOptions(dataset="fashion-mnist", data_dir=str(isolated / "d"), val_fraction=0.2)
    data = load_train_val(options, seed=0)
    assert (len(data.train), len(data.val)) == (24, 6)
    assert data.image_shape == (1, 28, 28)
    test = load_test_split(options, data.mean, data.std)
    assert len(test) == IDX_TEST


def test_nothing_found_fails_fast_with_instructions(isolated: Path) -> None:
    started = time.monotonic()
    with pytest.raises(DataNotFoundError) as info:
        load_raw("fashion-mnist", str(isolated / "nowhere"), train=True)
    assert time.monotonic() - started < 5.0
    message = str(info.value)
    assert isinstance(info.value, ConfigError)  # shown as one line by the CLI
    assert "\n" not in message
    assert "fashion-mnist not found" in message
    assert str(isolated / "nowhere") in message  # where it looked
    assert "train-images-idx3-ubyte.gz" in message  # what to put there
    assert "--data-dir" in message and "HPSEARCH_DATA" in message
    assert "apt-get install dataset-fashion-mnist" in message


def test_nothing_found_for_mnist_names_its_files(isolated: Path) -> None:
    with pytest.raises(DataNotFoundError, match="t10k-labels-idx1-ubyte.gz"):
        load_raw("mnist", None, train=False)


# --------------------------------------------------------------------------------------------
# the split
# --------------------------------------------------------------------------------------------

def _raw_index(split: Split, mean: float, std: float, raw: torch.Tensor) -> list[int]:
    """Index of each image of `split` in the raw uint8 set (undoing the normalisation)."""
    by_bytes = {bytes(img.numpy().tobytes()): i for i, img in enumerate(raw)}
    assert len(by_bytes) == len(raw)  # synthetic images are all distinct
    restored = ((split.images * std + mean) * 255).round().clamp(0, 255).to(torch.uint8)
    return [by_bytes[bytes(img.numpy().tobytes())] for img in restored]


@pytest.mark.parametrize("subset", [None, 300])
def test_split_is_disjoint_and_covers_the_subset(subset: int | None) -> None:
    options = DataOptions(dataset="synthetic", synthetic_size=500, subset=subset)
    data = load_train_val(options, seed=3)
    raw, raw_labels = synthetic_raw(500, seed=0)
    train_idx = _raw_index(data.train, data.mean, data.std, raw)
    val_idx = _raw_index(data.val, data.mean, data.std, raw)
    assert not set(train_idx) & set(val_idx)
    assert len(set(train_idx)) == len(train_idx) and len(set(val_idx)) == len(val_idx)
    n = subset or 500
    assert len(train_idx) + len(val_idx) == n
    assert len(val_idx) == round(0.1 * n)
    assert torch.equal(data.train.labels, raw_labels[train_idx])
    assert torch.equal(data.val.labels, raw_labels[val_idx])
    # statistics come from the training part only
    train_raw = raw[train_idx].float() / 255
    assert data.mean == pytest.approx(train_raw.mean().item(), abs=1e-6)
    assert data.std == pytest.approx(train_raw.std().item(), abs=1e-6)


def test_split_depends_on_the_seed_only() -> None:
    options = DataOptions(dataset="synthetic", synthetic_size=400, subset=200)
    raw, _ = synthetic_raw(400, seed=0)

    def val_set(seed: int) -> set[int]:
        data = load_train_val(options, seed=seed)
        return set(_raw_index(data.val, data.mean, data.std, raw))

    assert val_set(1) == val_set(1)
    assert val_set(1) != val_set(2)


def test_normalised_training_data() -> None:
    data = load_train_val(DataOptions(dataset="synthetic", synthetic_size=400), seed=0)
    assert data.train.images.dtype == torch.float32
    assert data.train.images.mean().item() == pytest.approx(0.0, abs=1e-4)
    assert data.train.images.std().item() == pytest.approx(1.0, abs=1e-3)
    full = load_full_train(DataOptions(dataset="synthetic", synthetic_size=400))
    assert len(full.train) == 400 and len(full.val) == 0
    test = load_test_split(DataOptions(dataset="synthetic", synthetic_size=400), 0.5, 0.2)
    assert len(test) == 200 and test.images.shape[1:] == (1, 28, 28)


# --------------------------------------------------------------------------------------------
# batches
# --------------------------------------------------------------------------------------------

def _numbered(n: int) -> Split:
    return Split(torch.arange(n, dtype=torch.float32).reshape(n, 1, 1, 1), torch.arange(n))


def test_iterate_batches_in_order_without_generator() -> None:
    batches = list(iterate_batches(_numbered(10), 4))
    assert [len(labels) for _, labels in batches] == [4, 4, 2]
    assert torch.equal(torch.cat([labels for _, labels in batches]), torch.arange(10))


def test_iterate_batches_shuffles_every_item_once() -> None:
    gen = torch.Generator().manual_seed(0)
    first = torch.cat([labels for _, labels in iterate_batches(_numbered(50), 8, gen)])
    second = torch.cat([labels for _, labels in iterate_batches(_numbered(50), 8, gen)])
    assert sorted(first.tolist()) == list(range(50))
    assert not torch.equal(first, torch.arange(50))
    assert not torch.equal(first, second)  # a new order every epoch
    for images, labels in iterate_batches(_numbered(50), 8, gen):
        assert torch.equal(images.flatten(), labels.float())  # images stay with their labels


# --------------------------------------------------------------------------------------------
# augmentation
# --------------------------------------------------------------------------------------------

def _batch(n: int = 64) -> torch.Tensor:
    return torch.randn((n, 1, 28, 28), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("aug", [
    Augmentation(),
    Augmentation(crop_padding=4, hflip=False),
    Augmentation(crop_padding=0, hflip=True),
    Augmentation(random_erasing=0.5, fill=-0.8),
])
def test_augmentation_keeps_shape_dtype_and_range(aug: Augmentation) -> None:
    images = _batch()
    out = aug(images, torch.Generator().manual_seed(1))
    assert out.shape == images.shape and out.dtype == images.dtype
    low = min(images.min().item(), aug.fill)
    assert low <= out.min().item() and out.max().item() <= images.max().item()
    assert torch.isfinite(out).all()


def test_augmentation_differs_per_sample() -> None:
    one = _batch(1)
    same = one.repeat(32, 1, 1, 1)
    out = Augmentation(crop_padding=2, hflip=True)(same, torch.Generator().manual_seed(0))
    distinct = {bytes(img.numpy().tobytes()) for img in out}
    assert len(distinct) > 10  # 25 crops x 2 flips possible per sample


def test_augmentation_is_deterministic_for_a_seeded_generator() -> None:
    aug = Augmentation(crop_padding=2, hflip=True, random_erasing=0.5)
    images = _batch()
    a = aug(images, torch.Generator().manual_seed(5))
    b = aug(images, torch.Generator().manual_seed(5))
    c = aug(images, torch.Generator().manual_seed(6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_crop_is_a_shift_of_the_padded_image() -> None:
    images = _batch(16)
    out = Augmentation(crop_padding=2, hflip=False, fill=-9.0)(images,
                                                               torch.Generator().manual_seed(2))
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2), value=-9.0)
    for original, cropped in zip(padded, out, strict=True):
        windows = [original[:, y:y + 28, x:x + 28] for y in range(5) for x in range(5)]
        assert any(torch.equal(cropped, w) for w in windows)


def test_hflip_only_flips() -> None:
    images = _batch(16)
    out = Augmentation(crop_padding=0, hflip=True)(images, torch.Generator().manual_seed(3))
    flipped = [torch.equal(o, i.flip(-1)) for o, i in zip(out, images, strict=True)]
    kept = [torch.equal(o, i) for o, i in zip(out, images, strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert any(flipped) and any(kept)


def test_random_erasing_fills_one_rectangle() -> None:
    images = torch.full((64, 1, 28, 28), 3.0)
    aug = Augmentation(crop_padding=0, hflip=False, random_erasing=1.0, fill=-1.0)
    out = aug(images, torch.Generator().manual_seed(4))
    assert set(out.unique().tolist()) <= {3.0, -1.0}
    for img in out[:, 0]:
        erased = img == -1.0
        assert erased.any()  # probability 1: every sample has a rectangle
        rows = erased.any(1).nonzero().flatten()
        cols = erased.any(0).nonzero().flatten()
        top, bottom, left, right = rows.min(), rows.max(), cols.min(), cols.max()
        box = erased[top:bottom + 1, left:right + 1]
        assert box.all()  # the bounding box is completely filled: one rectangle
        assert erased.sum() == box.numel()
        assert erased.sum() <= 0.45 * 28 * 28  # at most a third of the area, plus rounding


def test_random_erasing_probability() -> None:
    images = torch.full((400, 1, 28, 28), 3.0)
    aug = Augmentation(crop_padding=0, hflip=False, random_erasing=0.25, fill=-1.0)
    out = aug(images, torch.Generator().manual_seed(0))
    share = (out == -1.0).flatten(1).any(1).float().mean().item()
    assert 0.15 < share < 0.35


def test_a_data_dir_without_the_dataset_is_named_once_when_it_is_found_elsewhere(
        isolated: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    write_idx(isolated / "elsewhere", gz=True)
    monkeypatch.setenv("HPSEARCH_DATA", str(isolated / "elsewhere"))
    monkeypatch.setattr(data_mod, "_warned", set())
    with caplog.at_level("WARNING", logger=data_mod.__name__):
        for train in (True, False):
            load_raw("fashion-mnist", str(isolated / "typo"), train=train, download=False)
    said = [r.getMessage() for r in caplog.records if "typo" in r.getMessage()]
    assert said == [f"fashion-mnist: not found in {isolated / 'typo'} (no such folder); "
                    "using the copy found elsewhere"]
    caplog.clear()
    load_raw("fashion-mnist", str(isolated / "elsewhere"), train=True, download=False)
    assert not caplog.records  # found where the user said: nothing to say


def test_a_blended_synthetic_set_is_never_solved() -> None:
    """synthetic_blend (the toy study's): the nearest class pattern, as good as any model can
    do, is right on nearly every plain image but misses a share of the blended ones; the
    plain images are those of a set without the option."""
    plain, plain_labels = synthetic_raw(2000, seed=0)
    assert torch.equal(plain, synthetic_raw(2000, seed=0, blend=0.0)[0])
    centres = torch.stack([plain[plain_labels == c].float().mean(0) for c in range(10)])

    def nearest_pattern_accuracy(images: torch.Tensor, labels: torch.Tensor) -> float:
        distances = torch.cdist(images.float().flatten(1), centres.flatten(1))
        return (distances.argmin(1) == labels).float().mean().item()

    assert nearest_pattern_accuracy(*synthetic_raw(1000, seed=1)) > 0.99
    blended = nearest_pattern_accuracy(*synthetic_raw(1000, seed=1, blend=0.55))
    assert 0.5 < blended < 0.97, blended
    with pytest.raises(ConfigError, match="synthetic_blend must be in"):
        DataOptions(dataset="synthetic", synthetic_blend=1.0)
