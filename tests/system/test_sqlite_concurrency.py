"""Four worker processes on one SQLite file: no "database is locked", no failed trial, no
surplus trial in Optuna's table, every epoch of every trial stored exactly once. Tiny trials, so
the workers spend most of their time writing to the database at the same moments."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hpsearch.db.engine import make_engine
from hpsearch.db.models import Epoch, Study, Trial
from tests.study_files import write_tiny_study

ROOT = Path(__file__).resolve().parents[2]
N_TRIALS = 40
EPOCHS = 2
pytestmark = pytest.mark.slow


def tiny_fast_study(folder: Path) -> Path:
    path = write_tiny_study(folder, "crowd", n_trials=N_TRIALS, epochs=EPOCHS,
                            heartbeat=(1, 10))
    text = path.read_text().replace("hidden_dim = { low = 16, high = 32 }", "hidden_dim = 16")
    assert "hidden_dim = 16" in text
    path.write_text(text)
    return path


def test_four_workers_share_one_sqlite_file(sqlite_url: str, tmp_path: Path) -> None:
    path = tiny_fast_study(tmp_path)
    logs = tmp_path / "logs"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPSEARCH_")}
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "hpsearch", "run", str(path), "--db", sqlite_url, "--workers",
         "4", "--threads", "1", "--device", "cpu", "--log-dir", str(logs), "--top", "0"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    elapsed = time.monotonic() - started
    worker_logs = {p.name: p.read_text(errors="replace") for p in sorted(logs.rglob("*.log"))}
    everything = run.stdout + run.stderr + "".join(worker_logs.values())
    assert run.returncode == 0, run.stdout + run.stderr + str(worker_logs)
    assert len(worker_logs) == 4
    assert "database is locked" not in everything.lower()
    assert "Traceback" not in everything, everything
    for name, text in worker_logs.items():
        assert "worker done:" in text and "0 failed" in text, (name, text)

    engine = make_engine(sqlite_url)
    with Session(engine) as session:
        study_id = session.scalar(select(Study.id).where(Study.name == "crowd"))
        trials = list(session.scalars(select(Trial).where(Trial.study_id == study_id)))
        per_epoch = session.execute(
            select(Epoch.trial_id, Epoch.epoch, func.count()).join(Trial)
            .where(Trial.study_id == study_id).group_by(Epoch.trial_id, Epoch.epoch)).all()
    engine.dispose()
    assert [t.state for t in trials] == ["complete"] * N_TRIALS
    assert sorted(t.number for t in trials) == list(range(N_TRIALS))
    assert len({t.worker for t in trials}) == 4  # every worker really took part
    stored: dict[int, list[int]] = {}
    for trial_id, epoch, count in per_epoch:
        assert count == 1, (trial_id, epoch, count)
        stored.setdefault(trial_id, []).append(epoch)
    for trial in trials:
        assert sorted(stored.get(trial.id, [])) == list(range(1, EPOCHS + 1)), trial.number
        assert trial.epochs_run == EPOCHS and trial.value is not None

    # four workers reach the last trials together, yet Optuna's table (what optuna-dashboard
    # and `optuna trials` count) holds exactly the study's trials: no surplus start at all
    ostudy = optuna.load_study(study_name="crowd", storage=sqlite_url)
    states = [t.state for t in ostudy.get_trials(deepcopy=False)]
    assert states == [optuna.trial.TrialState.COMPLETE] * N_TRIALS
    assert elapsed < 90, f"{elapsed:.0f} s"
