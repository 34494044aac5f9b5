"""The results database tells one truth: readers rebuild nothing from the study file, every
view names the same best trial, and Optuna's own tools (optuna-dashboard, `optuna trials`) see
our metric name and per-trial metadata."""

from __future__ import annotations

import json
import math
import shutil
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

import optuna
import pytest
from sqlalchemy import select, update

from hpsearch.db import queries
from hpsearch.db.engine import make_engine
from hpsearch.db.models import Evaluation, Trial
from hpsearch.db.summary_queries import read_progress
from hpsearch.report.sections import build_report
from hpsearch.search.ensemble import plan_ensemble
from hpsearch.search.evaluate import plan_evaluation
from hpsearch.search.progress import summary_line
from hpsearch.search.study import prepare_study
from hpsearch.search.study_file import load_study
from hpsearch.search.worker import run_worker
from tests.helpers import hps
from tests.recorded_study import build_recorded_study
from tests.study_files import write_tiny_study

# fixed in the tiny study file, and different from TrialParams' defaults (64, 512, 256, auto)
FIXED = {"token_mlp_dim": 16, "channel_mlp_dim": 32, "batch_size": 64, "precision": "fp32"}
SAMPLED = ["patch_size", "hidden_dim", "lr"]  # the tiny study's [space] order


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real tiny study (3 trials; the median pruner prunes the third at epoch 1), run once;
    its study file is deleted afterwards. Tests work on copies of the database."""
    folder = tmp_path_factory.mktemp("records")
    path = write_tiny_study(folder, n_trials=3, epochs=3, pruner="median")
    path.write_text(path.read_text() + "\n[pruner]\nstartup_trials = 1\n")
    url = f"sqlite:///{folder / 'h.db'}"
    config = load_study(path)
    prepare_study(config, url)
    run_worker(config.name, url, device="cpu")
    path.unlink()  # nothing may need the study file from here on
    return folder


@pytest.fixture
def url(tiny_run: Path, tmp_path: Path) -> str:
    shutil.copy(tiny_run / "h.db", tmp_path / "h.db")
    return f"sqlite:///{tmp_path / 'h.db'}"


def rows(url: str) -> dict[int, Trial]:
    engine = make_engine(url)
    with engine.connect() as conn:
        found = {r.number: r for r in conn.execute(select(Trial.__table__))}
    engine.dispose()
    return found


# --- readers take the trial row, not the study file ------------------------------------------

def test_readers_use_the_trial_row_and_the_stored_spec(
        url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # evaluate's checkpoints land here

    def run(*args: str) -> str:
        code, out, err = hps(capsys, monkeypatch, *args, "--db", url)
        assert code == 0, err
        return out

    stored = rows(url)
    best = json.loads(run("best", "tiny", "--format", "json"))["number"]
    doc = tomllib.loads(run("best", "tiny", "--format", "toml"))
    assert {k: doc["params"][k] for k in FIXED} == FIXED
    assert {k: doc["params"][k] for k in SAMPLED} == {k: stored[best].params[k] for k in SAMPLED}
    assert doc["data"]["dataset"] == "synthetic"

    shown = json.loads(run("show", "tiny", "0", "--format", "json"))
    assert {k: shown["trial"]["params"][k] for k in FIXED} == FIXED
    assert shown["sampled"] == SAMPLED
    table = run("show", "tiny", "0")
    assert "patch_size (sampled)" in table and "token_mlp_dim (sampled)" not in table
    assert any(line.split()[:2] == ["token_mlp_dim", "16"]
               for line in table.replace("│", " ").splitlines())

    leaderboard = json.loads(run("trials", "tiny", "--format", "json"))
    assert all(list(r["params"]) == SAMPLED for r in leaderboard)

    # the report's axes come from the stored distributions: lr is log-uniform on [1e-3, 1e-2]
    engine = make_engine(url)
    with engine.connect() as conn:
        doc = build_report(conn, ["tiny"], curves=10)
    engine.dispose()
    [figure] = [f for s in doc.sections for f in s.figures if f.key == "s1-parameters"]
    axes = {d.label: d for d in figure.fig.data[0].dimensions}
    assert tuple(axes["lr (log10)"].range) == pytest.approx((-3, -2))
    assert tuple(axes["hidden_dim"].range) == (16, 32)
    assert list(axes["patch_size"].ticktext) == ["7", "14"]
    assert "wrote" in run("report", "tiny", "-o", str(tmp_path / "r.html"))

    plan = plan_evaluation("tiny", url)
    assert {k: getattr(plan.params, k) for k in FIXED} == FIXED
    assert "test acc (final)" in run("evaluate", "tiny", "--device", "cpu")


class Stop(Exception):
    """Raised by a stand-in trainer once it has seen its seed."""


def test_a_retried_trial_is_retrained_with_the_seed_the_search_used(
        url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The best trial as a retry of trial 2 (the retry resumes the first attempt's run, with
    its seed: the study's 0 + 2, as the row says): `best --format toml`, `evaluate` and greedy
    ensemble selection retrain it with that seed, not one derived from its own number."""
    code, out, err = hps(capsys, monkeypatch, "best", "tiny", "--format", "json", "--db", url)
    best = json.loads(out)["number"]
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(update(Trial).where(Trial.number == best).values(retried_from=2, seed=2))
    engine.dispose()
    code, out, err = hps(capsys, monkeypatch, "best", "tiny", "--format", "toml", "--db", url)
    assert code == 0, err
    assert tomllib.loads(out)["seed"] == 2
    assert plan_evaluation("tiny", url).seeds == (2,)
    assert plan_evaluation("tiny", url, trial=best, seeds=2).seeds == (2, 3)

    seeds: list[int] = []

    def fit(params: object, data: object, *, seed: int, **_: object) -> None:
        seeds.append(seed)
        raise Stop
    monkeypatch.setattr("hpsearch.trainer.loop.fit", fit)
    with pytest.raises(Stop):
        plan_ensemble("tiny", url, k=2, selection="greedy", device="cpu")
    assert seeds == [2]  # the best trial is the first candidate


# --- one definition of best ------------------------------------------------------------------

def test_every_view_names_the_same_best_trial(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Trial 1 was pruned after reaching the highest value of all (an intermediate value at a
    smaller budget) and trials 0 and 2 tie; then trial 4 completes with an infinite value. The
    best is trial 0 everywhere, the live view of `hpsearch run` included."""
    url = f"sqlite:///{tmp_path / 'r.db'}"
    recorded = build_recorded_study(url)  # trials 0, 2, 4, 6 complete; 1 and 5 pruned
    config = load_study(write_tiny_study(tmp_path))  # the live view's header needs one

    def run(*args: str) -> list | dict:
        code, out, err = hps(capsys, monkeypatch, *args, "--format", "json", "--db", url)
        assert code == 0, err
        return json.loads(out)

    engine = make_engine(url)
    for changes in ({0: 0.95, 1: 0.99, 2: 0.95}, {4: math.inf}):
        with engine.begin() as conn:
            for number, value in changes.items():
                conn.execute(update(Trial).where(Trial.number == number).values(value=value))
        with engine.connect() as conn:
            progress = read_progress(conn, recorded.name)
        assert (progress.best_number, progress.best_value) == (0, 0.95)
        assert summary_line(progress, config).endswith("best val acc 0.9500 (trial 0)")
        assert run("best", recorded.name)["number"] == 0
        assert run("studies")[0]["best_value"] == 0.95
        assert [r["number"] for r in run("trials", recorded.name) if r["is_best"]] == [0]
        assert run("compare", recorded.name)[0]["best_trial"] == 0
        assert plan_evaluation(recorded.name, url).trial.number == 0
    engine.dispose()


# --- Optuna's own tools see our metadata -----------------------------------------------------

def test_optuna_sees_the_metric_name_and_user_attributes(url: str) -> None:
    study = optuna.load_study(study_name="tiny", storage=url)
    assert study.metric_names == ["val_acc"]
    ours = rows(url)
    assert {t.state for t in study.trials} == {optuna.trial.TrialState.COMPLETE,
                                               optuna.trial.TrialState.PRUNED}
    for trial in study.trials:
        row = ours[trial.number]
        expected = {"n_params": row.n_params, "worker": row.worker, "precision": "fp32",
                    "device": "cpu", "best_epoch": row.best_epoch}
        if row.reason is not None:
            expected["reason"] = row.reason
        assert trial.user_attrs == expected
        assert (row.precision, row.device) == ("fp32", "cpu")
    assert any("pruned at epoch 1" in t.user_attrs.get("reason", "") for t in study.trials)


def test_evaluate_publishes_the_test_accuracy_to_optuna(url: str, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = hps(capsys, monkeypatch, "evaluate", "tiny", "--seeds", "2", "--device",
                       "cpu", "--db", url)
    assert code == 0, err
    engine = make_engine(url)
    with engine.connect() as conn:
        accs = sorted(conn.scalars(select(Evaluation.test_acc)))
        best = queries.best_trial(conn, queries.find_study(conn, "tiny"))
    engine.dispose()
    assert best is not None
    attrs = optuna.load_study(study_name="tiny", storage=url).user_attrs
    published = attrs[f"test_acc_final.trial_{best.number}"]
    assert published["seeds"] == 2 and published["mean"] == pytest.approx(sum(accs) / 2)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:  # loopback only
        return json.load(response)


def test_optuna_dashboard_serves_the_metric_name_and_attributes(url: str) -> None:
    pytest.importorskip("optuna_dashboard", reason="optuna-dashboard is not installed "
                        "(pip install '.[dashboard]'): the dashboard test did NOT run")
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-c", "import sys; from optuna_dashboard import run_server; "
         "run_server(sys.argv[1], host='127.0.0.1', port=int(sys.argv[2]))", url, str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                summaries = _get(f"{base}/api/studies")["study_summaries"]
                break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()[-2000:]
                assert time.monotonic() < deadline, "optuna-dashboard did not answer in 30 s"
                time.sleep(0.2)
        [summary] = summaries
        assert summary["study_name"] == "tiny"
        detail = _get(f"{base}/api/studies/{summary['study_id']}")
        assert detail["objective_names"] == ["val_acc"]
        attrs = [{a["key"]: a["value"] for a in t["user_attrs"]} for t in detail["trials"]]
        assert all({"n_params", "worker", "best_epoch", "precision", "device"} <= set(a)
                   for a in attrs)
        assert any(a.get("reason", "").startswith("pruned at epoch") for a in attrs)
    finally:
        server.terminate()
        server.wait(timeout=10)
