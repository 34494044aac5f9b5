"""`hpsearch evaluate --ensemble K` on a tiny real study: members chosen by the one rule of best,
greedy selection on validation predictions, one test pass per seed, rows in hps_ensemble and
hps_evaluation, and the ensemble beside the single best in compare and report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from sqlalchemy import inspect

from hpsearch.db import queries
from hpsearch.db.engine import make_engine
from hpsearch.db.migrate import downgrade, schema_drift, upgrade
from hpsearch.db.models import EnsembleEvaluation, Evaluation
from hpsearch.errors import ConfigError, HpsearchError
from hpsearch.search.ensemble import plan_ensemble
from hpsearch.trainer.ensemble_select import average, greedy_weights, score_probs
from tests.db_rows import model_rows
from tests.helpers import count_test_loads, hps, run_in_process
from tests.study_files import write_tiny_study


@pytest.fixture
def url(three_trials_url: str) -> str:
    return three_trials_url


def test_ensemble_cli_stores_members_and_ensemble_and_compare_shows_both(
        url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_test_loads(monkeypatch)
    code, out, err = hps(capsys, monkeypatch, "evaluate", "tiny", "--ensemble", "2", "--seeds",
                         "2", "--epochs", "1", "--tta", "flip", "--db", url, "--device", "cpu",
                         "--threads", "1")
    assert code == 0, err
    assert len(calls) == 2  # the test set read once per seed, for every model of that seed
    engine = make_engine(url)
    with engine.connect() as conn:
        top = queries.top_trials(conn, queries.find_study(conn, "tiny"), 2)
    engine.dispose()
    ens = model_rows(url, EnsembleEvaluation)
    assert [r.seed for r in ens] == [top[0].seed, top[0].seed + 1]  # the best trial's
    assert [m["trial"] for m in ens[0].members] == [t.number for t in top]  # best first
    assert [m["weight"] for m in ens[0].members] == [0.5, 0.5]
    assert all(r.selection == "top" and r.tta == "flip" for r in ens)
    assert all(0 <= r.test_acc <= 1 and 0 <= r.test_acc_tta <= 1 for r in ens)
    # each member's own retraining is an ordinary evaluation row, per seed: its own k-th
    members = model_rows(url, Evaluation)
    assert sorted((r.trial_id, r.seed) for r in members) == sorted(
        (t.id, t.seed + k) for t in top for k in (0, 1))
    assert f"test acc single best (trial {top[0].number})" in out
    assert "test acc ensemble (2 trials)" in out and "test acc ensemble + flip" in out

    # asked again: everything is stored, nothing trains, the test set is not read again
    calls.clear()
    code, out, err = hps(capsys, monkeypatch, "evaluate", "tiny", "--ensemble", "2", "--seeds",
                         "2", "--epochs", "1", "--tta", "flip", "--db", url, "--device", "cpu")
    assert code == 0, err
    assert calls == [] and out.count("stored earlier") == 2
    assert len(model_rows(url, Evaluation)) == 4

    code, out, err = hps(capsys, monkeypatch, "compare", "tiny", "--format", "json", "--db",
                         url)
    assert code == 0, err
    [study] = json.loads(out)
    single, ensemble = study["test_acc_final"], study["ensemble_test_acc"]
    assert study["tested_trial"] == top[0].number and single["seeds"] == 2
    assert ensemble["seeds"] == 2 and ensemble["mean"] == pytest.approx(
        sum(r.test_acc for r in ens) / 2)
    assert study["ensemble_tta_test_acc"]["mean"] == pytest.approx(
        sum(r.test_acc_tta for r in ens) / 2)
    assert study["ensemble_members"] == f"{top[0].number}×0.50, {top[1].number}×0.50 (top)"
    report = tmp_path / "r.html"
    code, out, err = hps(capsys, monkeypatch, "report", "tiny", "-o", str(report), "--db", url)
    assert code == 0, err
    text = report.read_text()
    assert "test acc (final)" in text and "ensemble test acc" in text


def test_ensemble_reuses_weights_stored_by_evaluate(url: str,
                                                    capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, err = hps(capsys, monkeypatch, "evaluate", "tiny", "--epochs", "1", "--db", url,
                       "--device", "cpu")
    assert code == 0, err
    [single] = model_rows(url, Evaluation)
    code, out, err = hps(capsys, monkeypatch, "evaluate", "tiny", "--ensemble", "2",
                         "--epochs", "1", "--db", url, "--device", "cpu")
    assert code == 0, err
    engine = make_engine(url)
    with engine.connect() as conn:
        best, second = queries.top_trials(conn, queries.find_study(conn, "tiny"), 2)
    engine.dispose()
    assert single.trial_id == best.id
    # the best trial's stored weights are loaded, not retrained: same test accuracy
    assert f"seed {best.seed} trial {best.number} epoch" not in err
    assert f"seed {second.seed} trial {second.number} epoch" in err
    assert f"single best {single.test_acc:.4f}" in out
    assert len(model_rows(url, Evaluation)) == 2


def test_greedy_weights_with_replacement() -> None:
    labels = torch.tensor([0, 1, 2, 3])
    eye = torch.eye(10)
    good = eye[labels] * 0.9 + 0.01
    # right and sure on two images, wrong but unsure (true class second) on the other two
    unsure = eye[torch.full((4,), 5)] * 0.3 + eye[labels] * 0.25 + 0.05
    half = torch.where(torch.tensor([1, 1, 0, 0]).bool()[:, None], good, unsure)
    other_half = torch.where(torch.tensor([0, 0, 1, 1]).bool()[:, None], good, unsure)
    # one candidate right everywhere: it alone, every round
    assert greedy_weights([half, good, other_half], labels, rounds=5) == [0, 1.0, 0]
    # two that are each right on half: together they are right everywhere
    assert score_probs(half, labels)[1] == score_probs(other_half, labels)[1] == 0.5
    weights = greedy_weights([half, other_half], labels, rounds=4)
    assert weights == [0.5, 0.5]
    assert score_probs(average([half, other_half], weights), labels)[1] == 1.0


def test_ensemble_errors_are_one_line(url: str, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="at least 2"):
        plan_ensemble("tiny", url, k=1)
    with pytest.raises(ConfigError, match="unknown selection"):
        plan_ensemble("tiny", url, k=2, selection="best")
    code, _, err = hps(capsys, monkeypatch, "evaluate", "tiny", "--ensemble", "2", "--trial",
                       "1", "--db", url)
    assert code != 0 and err.startswith("hpsearch: error: --trial and --ensemble")
    code, _, err = hps(capsys, monkeypatch, "evaluate", "tiny", "--tta", "flip", "--db", url)
    assert code != 0 and err.startswith("hpsearch: error: --select and --tta apply")
    assert model_rows(url, EnsembleEvaluation) == [] and model_rows(url, Evaluation) == []


def test_ensemble_needs_two_complete_trials(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'h.db'}"
    run_in_process(write_tiny_study(tmp_path, "one", n_trials=1, epochs=1), db, device="cpu")
    with pytest.raises(HpsearchError, match="has 1 complete trial"):
        plan_ensemble("one", db, k=3)


def test_migration_0006_upgrade_and_downgrade(sqlite_url: str) -> None:
    upgrade(sqlite_url)
    assert schema_drift(sqlite_url) == []
    engine = make_engine(sqlite_url)
    try:
        assert "hps_ensemble" in inspect(engine).get_table_names()
    finally:
        engine.dispose()
    downgrade(sqlite_url, "0005")
    engine = make_engine(sqlite_url)
    try:
        names = inspect(engine).get_table_names()
        assert "hps_ensemble" not in names and "hps_evaluation" in names
    finally:
        engine.dispose()
    upgrade(sqlite_url)
    assert schema_drift(sqlite_url) == []


@pytest.mark.parametrize("damage", ["missing", "corrupt", "another model"])
def test_unusable_stored_weights_are_retrained_alike(
        url: str, tmp_path: Path, damage: str, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A corrupt member stopped the ensemble while a missing one was retrained."""
    code, _, err = hps(capsys, monkeypatch, "evaluate", "tiny", "--epochs", "1", "--db", url,
                       "--device", "cpu")
    assert code == 0, err
    [single] = model_rows(url, Evaluation)
    weights = Path(single.checkpoint_path)
    if damage == "missing":
        weights.unlink()
    elif damage == "corrupt":
        weights.write_bytes(b"\0garbage" * 64)
    else:
        torch.save({"other.weight": torch.zeros(3)}, weights)
    code, out, err = hps(capsys, monkeypatch, "evaluate", "tiny", "--ensemble", "2",
                         "--epochs", "1", "--db", url, "--device", "cpu")
    assert code == 0, err
    assert "cannot be used" in caplog.text and "retrained" in caplog.text
    if damage == "another model":
        assert "does not fit the model" in caplog.text
