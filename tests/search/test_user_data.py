"""Data of the user's own, end to end: a study on an image folder and one on a .npz file are
searched, evaluated on their test split, and their model exported and loaded again."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hpsearch import api
from hpsearch.errors import ConfigError
from hpsearch.search.study_file import parse_study
from tests.helpers import (
    hps,
    idx_images,
    idx_labels,
    one_error_line,
    run_in_process,
    stored_trials,
)

CLASSES = ("ant", "bee", "cat")


def images_of(label: int, n: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """n images of one class: its brightness plus noise, so that the classes can be told
    apart."""
    noise = np.random.default_rng(seed).integers(0, 60, (n, *shape))
    return (30 + 80 * label + noise).astype(np.uint8)


def study(folder: Path, dataset: str, model: str) -> Path:
    path = folder / "own.toml"
    path.write_text(f"""
[study]
name = "own"
sampler = "random"
n_trials = 2

[data]
dataset = "{dataset}"

[budget]
max_epochs = 2

[workers]
checkpoint_dir = "{folder / 'checkpoints'}"

[space]
{model}
lr = {{ low = 3e-3, high = 1e-2, log = true }}
batch_size = 16
precision = "fp32"
""")
    return path


def search_evaluate_export(folder: Path, path: Path, capsys: pytest.CaptureFixture[str],
                           monkeypatch: pytest.MonkeyPatch) -> api.LoadedModel:
    url = f"sqlite:///{folder / 'h.db'}"
    run_in_process(path, url)
    assert [t.state for t in stored_trials(url, "own")] == ["complete", "complete"]
    code, out, err = hps(capsys, monkeypatch, "evaluate", "own", "--epochs", "1", "--db", url,
                         "--device", "cpu", "--threads", "1")
    assert code == 0, err
    assert "test acc" in out
    code, _, err = hps(capsys, monkeypatch, "export-model", "own", "-o",
                       str(folder / "model.pt"), "--db", url)
    assert code == 0, err
    return api.load_model(folder / "model.pt")


def test_an_image_folder_is_searched_evaluated_and_exported(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """12x12 RGB images of 3 classes, found by a path relative to the working directory; a
    Mixer of 3x3 patches of 4 pixels is built for them."""
    monkeypatch.chdir(tmp_path)
    for split, n in (("train", 30), ("test", 6)):
        for label, name in enumerate(CLASSES):
            (tmp_path / "photos" / split / name).mkdir(parents=True)
            for i, pixels in enumerate(images_of(label, n, (12, 12, 3), seed=label)):
                Image.fromarray(pixels).save(tmp_path / "photos" / split / name / f"{i}.png")
    model = "patch_size = 4\nhidden_dim = 16\ntoken_mlp_dim = 8\nchannel_mlp_dim = 16"
    loaded = search_evaluate_export(tmp_path, study(tmp_path, "photos", model), capsys,
                                    monkeypatch)
    images = np.stack([np.asarray(Image.open(p)) for p in
                       sorted((tmp_path / "photos" / "test" / "cat").iterdir())])
    assert loaded.model.head.out_features == 3
    assert loaded.predict(torch_images(images.transpose(0, 3, 1, 2))).shape == (6,)


def test_a_npz_file_is_searched_evaluated_and_exported(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Greyscale 10x10 arrays of 4 classes, labels (N, 1) as Keras saves them; the MLP is
    built for them."""
    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        x = np.concatenate([images_of(k, n, (10, 10), seed=k) for k in range(4)])
        return x, np.repeat(np.arange(4), n)[:, None]

    (x_train, y_train), (x_test, y_test) = split(25), split(5)
    np.savez(tmp_path / "arrays.npz", x_train=x_train, y_train=y_train, x_test=x_test,
             y_test=y_test)
    loaded = search_evaluate_export(
        tmp_path, study(tmp_path, str(tmp_path / "arrays.npz"), 'model = "mlp"\nmlp_width = 32'),
        capsys, monkeypatch)
    assert loaded.model.net[-1].out_features == 4
    predicted = loaded.predict(torch_images(x_test))
    assert (predicted.numpy() == y_test[:, 0]).mean() > 0.5  # it learnt the classes


def test_a_study_on_a_missing_folder_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^study: unknown dataset '.*nowhere' \(known: .*"
                                          r"no such folder or .npz file$"):
        parse_study({"study": {"name": "x"}, "data": {"dataset": str(tmp_path / "nowhere")}})


def torch_images(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images))


def test_run_reads_a_bad_npz_before_it_writes_anything(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Pixels stored as floats 0..255 (not uint8, not [0, 1]) are found by `run` itself, in one
    line, before the study is made (was: the study made, then each worker failing)."""
    x = images_of(1, 40, (8, 8), seed=0).astype(np.float32)
    y = np.arange(40) % 2  # both classes of 0..1 (labels 1 only: class 0 has no image)
    np.savez(tmp_path / "floats.npz", x_train=x, y_train=y, x_test=x[:8], y_test=y[:8])
    path = study(tmp_path, str(tmp_path / "floats.npz"), "patch_size = 4\nhidden_dim = 16")
    db = tmp_path / "h.db"
    code, out, err = hps(capsys, monkeypatch, "run", str(path), "--db", f"sqlite:///{db}")
    assert code == 2
    assert "x_train holds float32 values from 110.0 to " in err and err.count("\n") == 1, err
    assert not db.exists()


def _mnist_test_images_truncated(folder: Path) -> str:
    data = folder / "data"
    data.mkdir()
    for prefix, n in (("train", 40), ("t10k", 10)):
        images = torch.from_numpy(images_of(1, n, (28, 28), seed=0))
        for kind, content in (("images-idx3", idx_images(images)),
                              ("labels-idx1", idx_labels(torch.arange(n) % 10))):
            with gzip.open(data / f"{prefix}-{kind}-ubyte.gz", "wb") as file:
                file.write(content)
    whole = (data / "t10k-images-idx3-ubyte.gz").read_bytes()
    (data / "t10k-images-idx3-ubyte.gz").write_bytes(whole[: len(whole) // 2])
    return f'mnist"\ndata_dir = "{data}'


def _folder_with_a_broken_test_image(folder: Path) -> str:
    for split in ("train", "test"):
        for label, name in enumerate(CLASSES[:2]):
            (folder / "photos" / split / name).mkdir(parents=True)
            for i, pixels in enumerate(images_of(label, 8, (8, 8), seed=label)):
                Image.fromarray(pixels).save(folder / "photos" / split / name / f"{i}.png")
    (folder / "photos" / "test" / "bee" / "3.png").write_bytes(b"half a png")
    return str(folder / "photos")


def _npz_with_test_pixels_out_of_range(folder: Path) -> str:
    x, y = images_of(1, 40, (8, 8), seed=0), np.arange(40) % 2
    np.savez(folder / "arrays.npz", x_train=x, y_train=y, x_test=x[:8] * 2.0, y_test=y[:8])
    return str(folder / "arrays.npz")


@pytest.mark.parametrize(("write", "message"), [
    (_mnist_test_images_truncated, "cannot unpack dataset file .*t10k-images-idx3-ubyte.gz"),
    (_folder_with_a_broken_test_image, "cannot read image .*photos/test/bee/3.png"),
    (_npz_with_test_pixels_out_of_range, "x_test holds float64 values from 220.0 to 338.0"),
])
def test_run_reads_the_test_set_and_named_datasets_before_it_writes_anything(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        write, message: str) -> None:
    """A damaged file in the test set (found before: by `evaluate` after the whole search) or
    in a dataset known by name that is here (before: the study made, then its worker failed,
    exit 1) is one line from `run`, exit 2, before the database exists."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = study(tmp_path, write(tmp_path), "patch_size = 4\nhidden_dim = 16")
    db = tmp_path / "h.db"
    code, _, err = hps(capsys, monkeypatch, "run", str(path), "--db", f"sqlite:///{db}")
    assert code == 2, err
    assert re.search(message, one_error_line(err)), err
    assert not db.exists()
