"""Warm starts (`hpsearch enqueue`): queued configurations run first, exactly as given, and a
configuration outside the study's space is refused before anything is written."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from hpsearch.search.study import prepare_study
from hpsearch.search.study_file import load_study
from hpsearch.search.worker import run_worker
from tests.helpers import hps
from tests.study_files import write_tiny_study

SAMPLED = ("patch_size", "hidden_dim", "lr")  # the tiny study's [space] ranges and choices


def run(path: Path, url: str, trials: int) -> None:
    config = load_study(path)
    prepare_study(config, url, trials)
    run_worker(config.name, url)


def trials_of(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=name, storage=url)
    return sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)


@pytest.fixture
def source(sqlite_url: str, tmp_path: Path) -> str:
    """A finished study `tiny` with three complete trials, to start another one from."""
    run(write_tiny_study(tmp_path, "tiny", n_trials=3, epochs=1), sqlite_url, 3)
    return sqlite_url


def test_enqueue_from_a_best_toml_file_runs_that_configuration_first(
        source: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    code, best_toml, _ = hps(capsys, monkeypatch, "best", "tiny", "-f", "toml", "--db", source)
    assert code == 0
    (tmp_path / "best.toml").write_text(best_toml)
    target = write_tiny_study(tmp_path, "warm", n_trials=2, epochs=1)
    code, out, err = hps(capsys, monkeypatch, "enqueue", str(target), "--params",
                         str(tmp_path / "best.toml"), "--db", source)
    assert code == 0 and "queued" in out, err
    run(target, source, 2)
    best = max((t for t in trials_of(source, "tiny") if t.value is not None),
               key=lambda t: (t.value, -t.number))
    first = trials_of(source, "warm")[0]
    assert {k: first.params[k] for k in SAMPLED} == {k: best.params[k] for k in SAMPLED}
    assert first.user_attrs["enqueued_from"] == "file best.toml"


def test_enqueue_from_another_study_queues_its_best_trials_in_order(
        source: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    target = write_tiny_study(tmp_path, "warm", n_trials=3, epochs=1)
    code, out, err = hps(capsys, monkeypatch, "enqueue", str(target), "--from", "tiny",
                         "--top", "2", "--db", source)
    assert code == 0 and out.count("queued") == 2, err
    # queuing the same configurations again adds nothing
    code, out, _ = hps(capsys, monkeypatch, "enqueue", "warm", "--from", "tiny", "--top", "2",
                       "--db", source)
    assert code == 0 and out.count("not queued again") == 2
    run(target, source, 3)
    ranked = sorted((t for t in trials_of(source, "tiny") if t.value is not None),
                    key=lambda t: (-t.value, t.number))  # type: ignore[operator]
    warm = trials_of(source, "warm")
    assert len(warm) == 3
    for ours, theirs in zip(warm[:2], ranked[:2], strict=True):
        assert ours.params == theirs.params
        assert ours.user_attrs["enqueued_from"] == f"study tiny trial {theirs.number}"
    assert "enqueued_from" not in warm[2].user_attrs  # then the sampler takes over


def test_a_configuration_outside_the_space_is_refused_and_nothing_is_written(
        source: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[params]\npatch_size = 4\nhidden_dim = 999\nlr = 0.005\n"
                   "token_mlp_dim = 8\nepochs = 50\n")
    target = write_tiny_study(tmp_path, "warm", n_trials=2, epochs=1)
    code, out, err = hps(capsys, monkeypatch, "enqueue", str(target), "--params", str(bad),
                         "--db", source)
    assert code != 0 and out == ""
    line, = err.strip().splitlines()
    # every offending value is named; epochs is the study's budget, not a conflict
    for part in ("patch_size=4 (searched: one of 7, 14)", "hidden_dim=999 (searched: 16..32)",
                 "token_mlp_dim=8 (fixed at 16)"):
        assert part in line
    assert "epochs" not in line and "lr=" not in line
    names = [s.study_name for s in optuna.get_all_study_summaries(source)]
    assert "warm" not in names  # the new study was not even created
    code, _, err = hps(capsys, monkeypatch, "enqueue", "tiny", "--params", str(bad),
                       "--db", source)
    assert code != 0 and len(trials_of(source, "tiny")) == 3  # nothing queued in an old one


def test_enqueue_with_the_file_of_a_stored_study_checks_the_stored_space(
        source: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The study file of a study that is stored only names it: its edited [space] (hidden_dim
    100..200, token_mlp_dim 64) must not decide what fits; the stored space (16..32, 16) does."""
    edited = tmp_path / "edited"
    edited.mkdir()
    path = write_tiny_study(edited, "tiny", n_trials=3, epochs=1)
    path.write_text(path.read_text().replace("{ low = 16, high = 32 }", "{ low = 100, high = 200 }")
                    .replace("token_mlp_dim = 16", "token_mlp_dim = 64"))
    fits_file = tmp_path / "fits_file.toml"
    fits_file.write_text("[params]\npatch_size = 7\nhidden_dim = 150\nlr = 0.005\n"
                         "token_mlp_dim = 64\n")
    code, out, err = hps(capsys, monkeypatch, "enqueue", str(path), "--params", str(fits_file),
                         "--db", source)
    assert code != 0 and out == "", out
    assert "hidden_dim=150 (searched: 16..32)" in err and "token_mlp_dim=64 (fixed at 16)" in err
    assert len(trials_of(source, "tiny")) == 3  # nothing queued
    fits_stored = tmp_path / "fits_stored.toml"
    fits_stored.write_text("[params]\npatch_size = 7\nhidden_dim = 20\nlr = 0.005\n"
                           "token_mlp_dim = 16\n")
    code, out, err = hps(capsys, monkeypatch, "enqueue", str(path), "--params",
                         str(fits_stored), "--db", source)
    assert code == 0 and "tiny: queued: " in out, err
    queued = trials_of(source, "tiny")[-1]
    assert queued.state == optuna.trial.TrialState.WAITING
    assert queued.system_attrs["fixed_params"] == {"patch_size": 7, "hidden_dim": 20, "lr": 0.005}
