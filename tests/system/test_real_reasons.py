"""Round two, class 9: a trial that fails is recorded with the real reason, and a damaged file
is named. Each fault is real: an allocation the machine cannot satisfy, a truncated checkpoint,
a full (64 KiB tmpfs) disk, a truncated .gz dataset file.
"""

from __future__ import annotations

import gzip
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from hpsearch.paths import checkpoint_path
from hpsearch.search.objective import Objective, failure_reason
from hpsearch.search.study_file import parse_study
from hpsearch.trainer import data as data_mod
from hpsearch.trainer import data_files
from hpsearch.trainer.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from hpsearch.trainer.data import load_raw
from hpsearch.trainer.data_files import DataError
from hpsearch.trainer.torch_trainer import TorchTrainer
from tests.helpers import clean_env

ROOT = Path(__file__).resolve().parents[2]
# a Linear layer of 128 x 2e9 float32 weights: 1 TB, refused by the allocator at once
HUGE_SPACE = "channel_mlp_dim = 2000000000\ntoken_mlp_dim = 8\nhidden_dim = 128\n"


def study_doc(tmp: Path, space: str = "hidden_dim = 16\n") -> str:
    return f"""
[study]
name = "reasons"
sampler = "random"
pruner = "none"
n_trials = 1
[data]
dataset = "synthetic"
synthetic_size = 100
[budget]
max_epochs = 1
[workers]
heartbeat_interval = 1
grace_period = 4
checkpoint_dir = "{tmp / 'checkpoints'}"
[space]
{space}"""


def hpsearch(args: list[str], tmp: Path, timeout: float = 120
             ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hpsearch", *args], cwd=tmp, env=clean_env(tmp),
                          capture_output=True, text=True, timeout=timeout)


# --- out of memory --------------------------------------------------------------------------

def test_a_real_allocation_failure_reads_as_out_of_memory() -> None:
    with pytest.raises((RuntimeError, MemoryError)) as failed:
        torch.empty(1 << 42, dtype=torch.uint8)  # 4 TiB
    reason = failure_reason(failed.value)
    assert reason.startswith("out of memory: "), reason
    assert "enforce fail" not in reason and "\n" not in reason


@pytest.mark.slow
def test_an_out_of_memory_model_is_recorded_as_out_of_memory(tmp_path: Path) -> None:
    """Building the model used to happen before the trial's bookkeeping: the exception left
    the row "running", and another worker later called it "worker died: no heartbeat"."""
    (tmp_path / "study.toml").write_text(study_doc(tmp_path, HUGE_SPACE))
    db = tmp_path / "results.db"
    proc = hpsearch(["run", "study.toml", "--db", f"sqlite:///{db}", "--threads", "1"],
                    tmp_path)
    assert "Traceback" not in proc.stdout + proc.stderr
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT state, reason FROM hps_trial").fetchall()
    conn.close()
    assert rows, proc.stdout + proc.stderr
    for state, reason in rows:
        assert state == "failed", rows
        assert reason.startswith("out of memory: ") and "allocate" in reason, reason


# --- corrupt checkpoints on resume ------------------------------------------------------------

def test_a_corrupt_checkpoint_falls_back_to_an_older_one_then_to_scratch(tmp_path: Path) -> None:
    config = parse_study(__import__("tomllib").loads(study_doc(tmp_path)), "study")
    objective = Objective(config, 1, TorchTrainer(None, "cpu"), None, "w")  # type: ignore[arg-type]
    good = checkpoint_path(config.workers.checkpoint_dir, config.name, 0)
    save_checkpoint(good, {"epoch": 2, "model": {"w": torch.ones(3)}})
    newest = checkpoint_path(config.workers.checkpoint_dir, config.name, 1)
    save_checkpoint(newest, {"epoch": 3, "model": {"w": torch.ones(3)}})
    newest.write_bytes(newest.read_bytes()[:100])  # truncated, as by a crash mid-copy

    path, number, state, note = objective._latest_checkpoint([0, 1])
    assert (path, number, state and state["epoch"]) == (good, 0, 2)
    assert note == (f"trial 1's checkpoint {newest.name} is unreadable: resumed from trial 0's "
                    "checkpoint (epoch 2)")

    good.write_bytes(b"\x00" * 64)  # now the older one is garbage too
    path, number, state, note = objective._latest_checkpoint([0, 1])
    assert path is None and state is None
    assert note is not None and note.endswith("trained from scratch")
    assert "trial 0's checkpoint" in note and "trial 1's checkpoint" in note


def test_an_unreadable_checkpoint_is_one_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "trial-0.pt"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(CheckpointError, match=f"checkpoint {path} is unreadable"):
        load_checkpoint(path)


def test_train_resuming_from_a_corrupt_checkpoint_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "ck.pt").write_bytes(b"garbage")
    proc = hpsearch(["train", "--dataset", "synthetic", "--epochs", "1", "--checkpoint",
                     "ck.pt"], tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("hpsearch: error: checkpoint ck.pt is unreadable"), lines


# --- a full checkpoint disk -------------------------------------------------------------------

@contextmanager
def small_tmpfs(mount: Path, options: str = "size=64k") -> Iterator[Path]:
    """A real tmpfs mounted at `mount` (root only); the test is skipped, loudly, elsewhere."""
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"SKIPPED LOUDLY: cannot mount a tmpfs here ({proc.stderr.strip()}); "
                    "this full-disk / read-only case was not run")
    try:
        yield mount
    finally:  # lazily if a file on it is still open, so no mount outlives the test
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], check=True)


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs: a Mixer checkpoint (hundreds of KiB) cannot fit."""
    with small_tmpfs(tmp_path / "full") as mount:
        yield mount


def test_a_full_disk_names_the_checkpoint_and_leaves_no_partial_file(full_disk: Path) -> None:
    path = full_disk / "study" / "trial-0.pt"
    with pytest.raises(CheckpointError) as failed:
        save_checkpoint(path, {"epoch": 1, "w": torch.zeros(100_000)})  # 400 KB
    assert str(failed.value) == f"checkpoint: cannot write {path}: No space left on device"
    assert "inline_container" not in str(failed.value)
    assert list(path.parent.iterdir()) == []  # no .tmp left filling the disk


def test_train_onto_a_full_disk_is_one_line(full_disk: Path, tmp_path: Path) -> None:
    target = full_disk / "ck.pt"
    proc = hpsearch(["train", "--dataset", "synthetic", "--epochs", "1", "--checkpoint",
                     str(target)], tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert lines[-1] == (f"hpsearch: error: checkpoint: cannot write {target}: "
                         "No space left on device"), proc.stderr
    assert "Traceback" not in proc.stderr and "inline_container" not in proc.stderr
    assert list(full_disk.iterdir()) == []


# --- dataset files ----------------------------------------------------------------------------

@pytest.fixture
def fake_mnist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Fashion-MNIST-format .gz files in a folder of their own; no other copy, no network."""
    from tests.helpers import write_idx

    monkeypatch.setattr(data_files, "DEBIAN_DIRS", {})
    monkeypatch.delenv("HPSEARCH_DATA", raising=False)
    monkeypatch.setattr(data_mod, "try_download", lambda *a: False)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    folder = tmp_path / "data"
    write_idx(folder, gz=True)
    return folder


def test_a_truncated_gz_is_named_and_leaves_no_temporary_file(
        fake_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    images = fake_mnist / "train-images-idx3-ubyte.gz"
    whole = images.read_bytes()
    assert gzip.decompress(whole)  # the fixture's file is a real gzip stream
    images.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match=f"cannot unpack dataset file {images} into .*: "
                                        "Compressed file ended"):
        load_raw("fashion-mnist", str(fake_mnist), train=True)
    assert [p for p in cache.rglob("*") if p.is_file()] == []


@pytest.mark.parametrize("cache_kind", ["a-file", "read-only"])
def test_an_unwritable_cache_only_costs_time(fake_mnist: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch,
                                             cache_kind: str) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    if cache_kind == "a-file":
        cache.write_text("not a folder")
        images, labels = load_raw("fashion-mnist", str(fake_mnist), train=True)
    else:  # a read-only mount: root ignores permission bits, not a read-only file system
        with small_tmpfs(cache, "ro,size=64k"):
            images, labels = load_raw("fashion-mnist", str(fake_mnist), train=True)
    assert images.shape[1:] == (1, 28, 28) and len(images) == len(labels)
    # the temporary unpack folder is gone (torch keeps folders of its own there)
    assert list((tmp_path / "tmp").glob("hpsearch-*")) == []
