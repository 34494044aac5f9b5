"""Keep the best models: a search keeps its best [workers] keep_models trials' peak-epoch models
(the rest are deleted with the checkpoints); `hpsearch export-model` and `api.load_model` give
one back, self-contained, without retraining."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from hpsearch import api
from hpsearch.params import DataOptions, TrialParams
from hpsearch.paths import checkpoint_folder
from hpsearch.search.study import prepare_study
from hpsearch.search.study_file import load_study
from hpsearch.search.worker import run_worker
from hpsearch.trainer.data import load_train_val
from hpsearch.trainer.loop import evaluate
from tests.helpers import hps
from tests.study_files import write_tiny_study

KEEP = 2


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A tiny study of 4 trials that keeps 2 models: (its folder, database URL)."""
    folder = tmp_path_factory.mktemp("kept")
    path = write_tiny_study(folder, "kept", n_trials=4, epochs=3)
    path.write_text(path.read_text().replace("[workers]\n", f"[workers]\nkeep_models = {KEEP}\n"))
    url = f"sqlite:///{folder / 'h.db'}"
    config = load_study(path)
    prepare_study(config, url)
    run_worker(config.name, url, device="cpu")
    return folder, url


def test_the_best_trials_keep_their_peak_model(searched: tuple[Path, str]) -> None:
    folder, url = searched
    trials = api.trials("kept", url)
    assert [t.state for t in trials] == ["complete"] * 4
    best = sorted(trials, key=lambda t: (-(t.value or 0), t.number))[:KEEP]
    files = sorted(p.name for p in checkpoint_folder(folder / "checkpoints", "kept").iterdir())
    # the resume points are gone; the models of the 2 best trials are what is left
    assert files == sorted(f"model-trial-{t.number}.pt" for t in best)

    # each is the model of the trial's peak epoch: it scores the trial's value on validation
    data = load_train_val(DataOptions(dataset="synthetic", synthetic_size=300), seed=0)
    for trial in best:
        loaded = api.load_model(checkpoint_folder(folder / "checkpoints", "kept")
                                / f"model-trial-{trial.number}.pt")
        assert loaded.info["epoch"] == trial.best_epoch and loaded.info["seed"] == trial.number
        assert loaded.params == TrialParams.from_dict(trial.params)
        assert (loaded.mean, loaded.std) == (data.mean, data.std)
        _, acc = evaluate(loaded.model, data.val, torch.device("cpu"), None)
        assert acc == pytest.approx(trial.value, abs=1e-9)


def test_export_model_writes_a_self_contained_file(
        searched: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    folder, url = searched
    best = api.best_trial("kept", url)
    assert best is not None
    out = tmp_path / "model.pt"
    code, stdout, err = hps(capsys, monkeypatch, "export-model", "kept", "-o", str(out),
                            "--db", url)
    assert code == 0, err
    assert f"trial {best.number}, epoch {best.best_epoch}" in stdout
    # no study, no database, no checkpoint folder needed to use it
    aside = shutil.move(folder / "checkpoints", tmp_path / "aside")
    try:
        loaded = api.load_model(out)
    finally:
        shutil.move(aside, folder / "checkpoints")
    assert loaded.info["study"] == "kept" and loaded.info["trial"] == best.number
    assert loaded.info["value"] == best.value and loaded.info["objective"] == "best_val_acc"
    assert loaded.params == TrialParams.from_dict(best.params)  # the row: applied ones only
    images = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8)
    assert loaded.predict(images).shape == (5,)


@pytest.mark.parametrize(("args", "message"), [
    (["nope"], "unknown study 'nope'"),
    (["kept", "99"], "has no trial 99"),
    (["kept", "-o", "{tmp}/no/such/folder/model.pt"], "cannot write"),
    (["kept", "-o", "{tmp}"], "it is a directory"),
])
def test_export_model_errors_are_one_line(
        searched: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch, args: list[str], message: str) -> None:
    _, url = searched
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "-o" not in args:
        args += ["-o", str(tmp_path / "model.pt")]
    code, out, err = hps(capsys, monkeypatch, "export-model", *args, "--db", url)
    assert code != 0 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "model.pt").exists()


def test_a_trial_outside_the_best_has_no_kept_model(
        searched: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    _, url = searched
    worst = min(api.trials("kept", url), key=lambda t: (t.value or 0, -t.number))
    code, out, err = hps(capsys, monkeypatch, "export-model", "kept", str(worst.number), "-o",
                         str(tmp_path / "m.pt"), "--db", url)
    assert code != 0 and "has no kept model" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m.pt").exists()
