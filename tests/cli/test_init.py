"""`hpsearch init`: the shipped example studies, written out as they run."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpsearch.search.examples import EXAMPLES
from hpsearch.search.study_file import load_study
from hpsearch.trainer.factory import build_factory_model
from tests.helpers import hps

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_every_example_is_written_as_a_study_that_loads(
        name: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = hps(capsys, monkeypatch, "init", "--example", name)
    assert code == 0, err
    example = EXAMPLES[name]
    study = tmp_path / example.study
    assert f"wrote {example.study}" in out and f"hpsearch run {example.study}" in out
    assert study.read_text().startswith("#")  # commented
    assert load_study(study).name == load_study(ROOT / example.folder.lstrip("_")
                                                / example.study).name


def test_the_cnn_example_writes_its_factory_beside_it_and_runs_from_there(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    monkeypatch.chdir(tmp_path)
    code, out, err = hps(capsys, monkeypatch, "init", "mine", "--example", "cnn")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == [
        "cnn-fashion-mnist.toml", "cnn.py"]
    assert "cd mine && hpsearch run cnn-fashion-mnist.toml" in out
    model = load_study(tmp_path / "mine" / "cnn-fashion-mnist.toml").fixed["model"]
    assert model == "cnn:small_cnn"
    monkeypatch.chdir(tmp_path / "mine")  # where the printed command runs it
    monkeypatch.syspath_prepend(str(tmp_path / "mine"))
    net = build_factory_model(model, {"width": 8, "blocks": 2}, (1, 28, 28), 10)
    assert sum(p.numel() for p in net.parameters()) > 0


def test_init_never_overwrites_and_writes_nothing_when_refusing(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.toml").write_text("keep me")
    code, _, err = hps(capsys, monkeypatch, "init", "mine.toml")
    assert code != 0 and err.count("\n") == 1 and "mine.toml exists" in err
    assert (tmp_path / "mine.toml").read_text() == "keep me"
    # the factory's file is there already: the study is not written either
    (tmp_path / "cnn.py").write_text("# mine")
    code, _, err = hps(capsys, monkeypatch, "init", "--example", "cnn")
    assert code != 0 and "cnn.py exists" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cnn.py", "mine.toml"]
    code, _, err = hps(capsys, monkeypatch, "init", "nowhere/x.toml")
    assert code != 0 and "does not exist" in err
