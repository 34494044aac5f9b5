"""The study runner against SQLite and a real PostgreSQL server, on tiny synthetic studies."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hpsearch.db.engine import make_engine
from hpsearch.db.models import Epoch
from hpsearch.search.study_file import load_study
from tests.helpers import epoch_numbers, hps, run_in_process, stored_trials
from tests.study_files import write_tiny_study

ROOT = Path(__file__).resolve().parents[2]


def test_every_epoch_of_every_trial_is_stored_and_optuna_agrees(db_url: str,
                                                                tmp_path: Path) -> None:
    path = write_tiny_study(tmp_path, n_trials=3, epochs=3)
    run_in_process(path, db_url)
    trials = stored_trials(db_url, "tiny")
    assert [t.number for t in trials] == [0, 1, 2]
    for trial in trials:
        assert trial.state == "complete"
        assert epoch_numbers(db_url, trial.id) == [1, 2, 3]
        assert trial.epochs_run == 3 and trial.n_params and trial.seconds > 0
        assert ":" in trial.worker
    # plain Optuna reads the same study from the same URL
    study = optuna.load_study(study_name="tiny", storage=db_url)
    frozen = sorted(study.trials, key=lambda t: t.number)
    assert [t.state for t in frozen] == [optuna.trial.TrialState.COMPLETE] * 3
    for ours, theirs in zip(trials, frozen, strict=True):
        assert theirs.value == pytest.approx(ours.value)
        assert set(theirs.params) == set(ours.sampled)
        assert {k: ours.params[k] for k in ours.sampled} == pytest.approx(theirs.params)
        # the fixed values are on the row too, resolved: no reader needs the study file
        assert ours.params["token_mlp_dim"] == 16 and ours.params["precision"] == "fp32"
        assert ours.params["epochs"] == 3 and ours.params["dropout"] == 0.0
        assert (ours.precision, ours.device) == ("fp32", "cpu")  # what it ran with
        assert max(theirs.intermediate_values.values()) == pytest.approx(ours.value)


def test_resuming_a_study_continues_its_numbering(sqlite_url: str, tmp_path: Path) -> None:
    path = write_tiny_study(tmp_path, n_trials=2, epochs=1)
    run_in_process(path, sqlite_url)
    run_in_process(path, sqlite_url, trials=4)
    trials = stored_trials(sqlite_url, "tiny")
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert len(optuna.load_study(study_name="tiny", storage=sqlite_url).trials) == 4


def test_pruned_trials_stop_early_and_are_recorded(sqlite_url: str, tmp_path: Path) -> None:
    # a wide learning-rate range makes some trials clearly worse at the first rung
    path = write_tiny_study(tmp_path, n_trials=8, epochs=4, pruner="successive-halving",
                            extra_space='optimizer = "sgd"\nmomentum = 0.0')
    text = path.read_text().replace("lr = { low = 1e-3, high = 1e-2, log = true }",
                                    "lr = { low = 1e-5, high = 1e-1, log = true }")
    path.write_text(text)
    run_in_process(path, sqlite_url)
    trials = stored_trials(sqlite_url, "tiny")
    pruned = [t for t in trials if t.state == "pruned"]
    assert len(trials) == 8 and pruned
    for trial in pruned:
        assert trial.epochs_run < 4
        assert trial.reason.startswith("pruned at epoch")
        assert epoch_numbers(sqlite_url, trial.id) == list(range(1, trial.epochs_run + 1))
    states = {t.number: t.state for t in optuna.load_study(
        study_name="tiny", storage=sqlite_url).trials}
    assert all(states[t.number] == optuna.trial.TrialState.PRUNED for t in pruned)


def test_divergent_trials_end_with_their_reason(sqlite_url: str, tmp_path: Path) -> None:
    path = write_tiny_study(tmp_path, n_trials=1, epochs=3,
                            extra_space='optimizer = "sgd"')
    path.write_text(path.read_text().replace(
        "lr = { low = 1e-3, high = 1e-2, log = true }", "lr = 1e6"))
    run_in_process(path, sqlite_url)
    (trial,) = stored_trials(sqlite_url, "tiny")
    assert trial.state == "pruned"
    assert trial.reason.startswith("diverged: non-finite")


def hpsearch(*args: str, env: dict[str, str] | None = None,
             timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hpsearch", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env={**os.environ, **(env or {})})


@pytest.mark.slow
def test_two_worker_processes_finish_exactly_n_trials(db_url: str, tmp_path: Path) -> None:
    path = write_tiny_study(tmp_path, n_trials=6, epochs=2, sampler="tpe")
    # FORCE_COLOR makes rich call a pipe a terminal; the log must still get plain lines
    result = hpsearch("run", str(path), "--db", db_url, "--workers", "2",
                      "--log-dir", str(tmp_path / "logs"), env={"FORCE_COLOR": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    trials = stored_trials(db_url, "tiny")
    counted = [t for t in trials if t.state in ("complete", "pruned")]
    assert len(counted) == 6
    # both workers race for the last trial, yet Optuna's table holds no surplus trial: the
    # dashboard's count, Optuna's and ours are all n_trials
    frozen = optuna.load_study(study_name="tiny", storage=db_url).get_trials(deepcopy=False)
    assert len(frozen) == len(trials) == 6
    assert [t.optuna_trial_id for t in trials] == [t._trial_id for t in frozen]
    assert len({t.worker for t in trials}) == 2  # both processes ran trials
    for trial in counted:
        assert epoch_numbers(db_url, trial.id) == list(range(1, trial.epochs_run + 1))
    with Session(make_engine(db_url)) as session:  # no epoch stored twice
        rows = session.scalar(select(func.count()).select_from(Epoch))
        assert rows == sum(t.epochs_run for t in trials)
    assert "quick" not in result.stdout and "tiny" in result.stdout
    # stdout is a pipe, not a terminal: a timestamped line whenever a trial finishes
    progress_lines = [line for line in result.stdout.splitlines() if " finished " in line]
    assert len(progress_lines) >= 2
    assert re.fullmatch(r"\d\d:\d\d:\d\d finished 6/6 .*best val acc [01]\.\d{4} \(trial \d+\)",
                        progress_lines[-1])


def test_worker_for_an_unknown_study_is_one_clear_line(sqlite_url: str) -> None:
    hpsearch("db", "upgrade", "--db", sqlite_url)
    result = hpsearch("worker", "no-such-study", "--db", sqlite_url)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("hpsearch: error: unknown study")
    assert "Traceback" not in result.stderr


def test_the_study_files_timeout_stops_a_worker_starting_trials(sqlite_url: str,
                                                               tmp_path: Path) -> None:
    path = write_tiny_study(tmp_path, n_trials=50, epochs=2)
    path.write_text(path.read_text().replace("seed = 0", "seed = 0\ntimeout = 1"))
    assert load_study(path).timeout == 1
    run_in_process(path, sqlite_url)
    trials = stored_trials(sqlite_url, "tiny")
    # no trial starts after the 1 s deadline (it counts from the worker's start, before the
    # first trial; 0.5 s of slack for the row write), and each one started finishes
    assert 1 <= len(trials) < 50
    assert all(t.state == "complete" for t in trials)
    first = min(t.started_at for t in trials)
    assert max((t.started_at - first).total_seconds() for t in trials) < 1.5


LAUNCH_PROBE = """
import sys
import hpsearch.search.launcher as launcher

seen = []

def record_instead_of_starting(*args, **kwargs):
    seen.append("torch" in sys.modules)
    return []

launcher.start_workers = record_instead_of_starting
from typer.testing import CliRunner
from hpsearch.cli import app
result = CliRunner().invoke(app, ["run", sys.argv[1], "--db", sys.argv[2], "--top", "0"])
print("torch imported before the workers start:", *seen)
print("exit code:", result.exit_code)
"""


def test_run_starts_its_workers_without_importing_torch(tmp_path: Path) -> None:
    # importing torch costs the launcher ~1 s before each worker can start its own import
    path = write_tiny_study(tmp_path, n_trials=1, epochs=1)
    done = subprocess.run([sys.executable, "-c", LAUNCH_PROBE, str(path),
                           f"sqlite:///{tmp_path / 'probe.db'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    assert "torch imported before the workers start: False" in done.stdout, output
    assert "exit code: 0" in done.stdout, output


def test_exports_say_what_each_trial_ran_with(sqlite_url: str, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Trials from machines with other precisions compare honestly: `show` and exports carry
    the device and the precision actually used ("auto" resolved)."""
    run_in_process(write_tiny_study(tmp_path, n_trials=1, epochs=1), sqlite_url)
    code, out, err = hps(capsys, monkeypatch, "export", "tiny", "--format", "json",
                         "--db", sqlite_url)
    assert code == 0, err
    (record,) = json.loads(out)
    assert (record["device"], record["precision"]) == ("cpu", "fp32")
    code, out, _ = hps(capsys, monkeypatch, "show", "tiny", "0", "--db", sqlite_url)
    assert code == 0 and "precision used" in out
