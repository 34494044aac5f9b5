"""Faults that really happen: a worker killed mid-trial, Ctrl-C. Each test does the fault."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from hpsearch.db.models import Trial
from hpsearch.search.study import prepare_study
from hpsearch.search.study_file import load_study
from tests.helpers import (
    ROOT,
    epochs_of,
    kill_mid_trial,
    slow_study,
    start_worker,
    stored_trials,
    wait_for,
)

pytestmark = pytest.mark.slow


def test_killed_worker_trial_is_retried_from_its_checkpoint(db_url: str,
                                                            tmp_path: Path) -> None:
    path = slow_study(tmp_path, n_trials=3)
    prepare_study(load_study(path), db_url)
    workers = [start_worker("tiny", db_url, tmp_path / f"worker-{i}.log") for i in range(2)]
    try:
        killed, victim = kill_mid_trial(db_url, "tiny", workers)
        killed_at = time.monotonic()
        done_before_kill = killed.epochs_run
        (survivor,) = [w for w in workers if w is not victim]
        # the survivor notices while it trains: grace period 4 s, checked every second
        wait_for(lambda: next(t for t in stored_trials(db_url, "tiny")
                              if t.number == killed.number).state == "failed", 30,
                 "the dead trial to be failed")
        assert time.monotonic() - killed_at < 4 + 6
        log = tmp_path / f"worker-{workers.index(survivor)}.log"
        assert survivor.wait(timeout=240) == 0, log.read_text()
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()

    trials = {t.number: t for t in stored_trials(db_url, "tiny")}
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
    wait_for(lambda: any(t.epochs_run >= 1 for t in stored_trials(sqlite_url, "tiny")), 120,
             "a first epoch")
    interrupted_at = time.monotonic()
    run.send_signal(signal.SIGINT)
    output, _ = run.communicate(timeout=60)
    assert time.monotonic() - interrupted_at < 30
    assert run.returncode == 130, output
    assert "run the same command to continue" in output
    trials = stored_trials(sqlite_url, "tiny")
    assert trials and not [t for t in trials if t.state == "running"]
    assert any(t.reason == "interrupted (Ctrl-C)" for t in trials)

    resumed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                             env={**os.environ})
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    trials = stored_trials(sqlite_url, "tiny")
    assert len([t for t in trials if t.state in ("complete", "pruned")]) == 3
    numbers = [t.number for t in trials]
    assert numbers == sorted(set(numbers))  # numbering continued, nothing reused


def _holds_a_write_lock(db: Path) -> bool:
    """Whether some connection holds the SQLite file's write lock (a frozen one never lets go)."""
    conn = sqlite3.connect(db, timeout=0.5, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        return False
    except sqlite3.OperationalError:
        return True
    finally:
        conn.close()


def test_a_frozen_worker_that_wakes_drops_the_trial_retried_elsewhere(sqlite_url: str,
                                                                      tmp_path: Path) -> None:
    """SIGSTOP a worker mid-trial until the other worker has failed its trial (no heartbeat)
    and resumed it from the checkpoint, then SIGCONT: the woken worker drops the trial
    without writing to it (the dead trial's reason and epochs stay as they were), carries on,
    and every worker exits 0. Each step waits for the state it needs, not for a time."""
    path = slow_study(tmp_path, n_trials=3)
    prepare_study(load_study(path), sqlite_url)
    logs = [tmp_path / f"worker-{i}.log" for i in range(2)]
    workers = [start_worker("tiny", sqlite_url, log) for log in logs]
    db = Path(sqlite_url.removeprefix("sqlite:///"))
    try:
        def frozen_mid_trial() -> Trial | None:
            for trial in stored_trials(sqlite_url, "tiny"):
                if trial.state != "running" or trial.epochs_run < 2:
                    continue
                worker = next(w for w in workers if trial.worker.endswith(f":{w.pid}"))
                worker.send_signal(signal.SIGSTOP)
                row = next(t for t in stored_trials(sqlite_url, "tiny") if t.number == trial.number)
                # frozen holding SQLite's write lock, it would block the other worker for good
                if row.state == "running" and not _holds_a_write_lock(db):
                    return row
                worker.send_signal(signal.SIGCONT)
            return None

        deadline = time.monotonic() + 120
        while (frozen := frozen_mid_trial()) is None:
            assert time.monotonic() < deadline, "no worker finished two epochs of a trial"
            time.sleep(0.05)
        (sleeper,) = [w for w in workers if frozen.worker.endswith(f":{w.pid}")]

        def retried() -> Trial | None:
            return next((t for t in stored_trials(sqlite_url, "tiny")
                         if t.retried_from == frozen.number and t.epochs_run > 0), None)

        try:
            wait_for(lambda: retried() is not None, 240, "the frozen trial's retry to resume")
        except AssertionError:
            raise AssertionError("".join(log.read_text() for log in logs) + repr([
                (t.number, t.state, t.reason, t.retried_from, t.epochs_run)
                for t in stored_trials(sqlite_url, "tiny")])) from None
        (dead,) = [t for t in stored_trials(sqlite_url, "tiny") if t.number == frozen.number]
        dead_epochs = [(e.epoch, e.seconds) for e in epochs_of(sqlite_url, dead.id)]
        sleeper.send_signal(signal.SIGCONT)
        for worker, log in zip(workers, logs, strict=True):
            assert worker.wait(timeout=240) == 0, log.read_text()
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGCONT)
                worker.kill()

    text = logs[workers.index(sleeper)].read_text()
    assert "dropped: its retry resumes from its checkpoint" in text, text
    assert "Cannot tell a" not in text and "Traceback" not in text, text
    (after,) = [t for t in stored_trials(sqlite_url, "tiny") if t.number == frozen.number]
    assert (after.state, after.reason) == ("failed", dead.reason)
    assert "no heartbeat" in (after.reason or "")
    assert [(e.epoch, e.seconds) for e in epochs_of(sqlite_url, after.id)] == dead_epochs
    trials = stored_trials(sqlite_url, "tiny")
    (retry,) = [t for t in trials if t.retried_from == frozen.number]
    assert retry.state == "complete" and retry.epochs_run == 8
    assert len([t for t in trials if t.state in ("complete", "pruned")]) == 3
    states = [t.state for t in optuna.load_study(study_name="tiny", storage=sqlite_url).trials]
    assert optuna.trial.TrialState.RUNNING not in states
