"""Faults that really happen: a worker killed mid-trial, Ctrl-C. Each test does the fault."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from hpsearch.db.engine import make_engine
from hpsearch.db.models import Epoch, Study, Trial
from hpsearch.search.study import prepare_study
from hpsearch.search.study_file import load_study
from tests.helpers import wait_for
from tests.study_files import write_tiny_study

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def start_worker(name: str, url: str, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "hpsearch", "worker", name, "--db", url,
                                 "--threads", "1"], stdout=out, stderr=subprocess.STDOUT,
                                cwd=ROOT, start_new_session=True)


def trials_of(url: str, name: str) -> list[Trial]:
    with Session(make_engine(url), expire_on_commit=False) as session:
        study_id = session.scalar(select(Study.id).where(Study.name == name))
        return list(session.scalars(select(Trial).where(Trial.study_id == study_id)
                                    .order_by(Trial.number)))


def epochs_of(url: str, trial_id: int) -> list[Epoch]:
    with Session(make_engine(url), expire_on_commit=False) as session:
        return list(session.scalars(select(Epoch).where(Epoch.trial_id == trial_id)
                                    .order_by(Epoch.epoch)))




def slow_study(folder: Path, n_trials: int, epochs: int = 8) -> Path:
    """Trials of ~0.3 s per epoch, long enough to kill one mid-way."""
    path = write_tiny_study(folder, n_trials=n_trials, epochs=epochs, heartbeat=(1, 4))
    path.write_text(path.read_text().replace("synthetic_size = 300", "synthetic_size = 4000"))
    return path


def test_killed_worker_trial_is_retried_from_its_checkpoint(db_url: str,
                                                            tmp_path: Path) -> None:
    path = slow_study(tmp_path, n_trials=3)
    prepare_study(load_study(path), db_url)
    workers = [start_worker("tiny", db_url, tmp_path / f"worker-{i}.log") for i in range(2)]
    try:
        def mid_trial() -> list[Trial]:
            return [t for t in trials_of(db_url, "tiny")
                    if t.state == "running" and t.epochs_run >= 2]

        def freeze_mid_trial() -> Trial | None:
            """Stop a worker mid-trial; on a loaded machine the trial may end between reading
            and stopping, so check again once the worker is frozen."""
            for trial in mid_trial():
                worker = next(w for w in workers if trial.worker.endswith(f":{w.pid}"))
                worker.send_signal(signal.SIGSTOP)
                still = [t for t in mid_trial() if t.number == trial.number]
                if still:
                    return still[0]
                worker.send_signal(signal.SIGCONT)
            return None

        deadline = time.monotonic() + 120
        while (killed := freeze_mid_trial()) is None:
            assert time.monotonic() < deadline, "no worker finished two epochs of a trial"
            time.sleep(0.05)
        (victim,) = [w for w in workers if killed.worker.endswith(f":{w.pid}")]
        victim.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        victim.wait()
        done_before_kill = killed.epochs_run
        (survivor,) = [w for w in workers if w is not victim]
        # the survivor notices while it trains: grace period 4 s, checked every second
        wait_for(lambda: next(t for t in trials_of(db_url, "tiny")
                              if t.number == killed.number).state == "failed", 30,
                 "the dead trial to be failed")
        assert time.monotonic() - killed_at < 4 + 6
        log = tmp_path / f"worker-{workers.index(survivor)}.log"
        assert survivor.wait(timeout=240) == 0, log.read_text()
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()

    trials = {t.number: t for t in trials_of(db_url, "tiny")}
    assert trials[killed.number].state == "failed"
    assert "no heartbeat" in trials[killed.number].reason
    (retry,) = [t for t in trials.values() if t.retried_from == killed.number]
    assert retry.state == "complete" and retry.epochs_run == 8
    # the retry resumed: the epochs finished before the kill are carried over unchanged (same
    # timings), not trained again
    before = {e.epoch: e for e in epochs_of(db_url, killed.id)}
    after = {e.epoch: e for e in epochs_of(db_url, retry.id)}
    assert sorted(after) == list(range(1, 9))
    for epoch in range(1, done_before_kill):
        assert after[epoch].seconds == before[epoch].seconds
        assert after[epoch].val_acc == before[epoch].val_acc
    assert "resuming from" in log.read_text()
    finished = [t for t in trials.values() if t.state in ("complete", "pruned")]
    assert len(finished) == 3
    assert not [t for t in trials.values() if t.state == "running"]
    study = optuna.load_study(study_name="tiny", storage=db_url)
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 3
    assert optuna.trial.TrialState.RUNNING not in states


def test_ctrl_c_stops_run_cleanly_and_the_same_command_resumes(sqlite_url: str,
                                                                tmp_path: Path) -> None:
    # ~8 s trials: on a loaded machine the test's polling lags, and the Ctrl-C must still
    # land while trials run
    path = slow_study(tmp_path, n_trials=3, epochs=24)
    command = [sys.executable, "-m", "hpsearch", "run", str(path), "--db", sqlite_url,
               "--workers", "2", "--threads", "1", "--log-dir", str(tmp_path / "logs")]
    run = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
    wait_for(lambda: any(t.epochs_run >= 1 for t in trials_of(sqlite_url, "tiny")), 120,
             "a first epoch")
    interrupted_at = time.monotonic()
    run.send_signal(signal.SIGINT)
    output, _ = run.communicate(timeout=60)
    assert time.monotonic() - interrupted_at < 30
    assert run.returncode == 130, output
    assert "run the same command to continue" in output
    trials = trials_of(sqlite_url, "tiny")
    assert trials and not [t for t in trials if t.state == "running"]
    assert any(t.reason == "interrupted (Ctrl-C)" for t in trials)

    resumed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                             env={**os.environ})
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    trials = trials_of(sqlite_url, "tiny")
    assert len([t for t in trials if t.state in ("complete", "pruned")]) == 3
    numbers = [t.number for t in trials]
    assert numbers == sorted(set(numbers))  # numbering continued, nothing reused
