"""SIGTERM and SIGHUP stop `hpsearch run` and `hpsearch worker` like Ctrl-C, and no worker
outlives its launcher, not even one killed with SIGKILL. Real processes, real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from hpsearch.search.study import prepare_study
from hpsearch.search.study_file import load_study
from tests.helpers import ROOT, epochs_of, slow_study, start_worker, stored_trials, wait_for

pytestmark = pytest.mark.slow


def children(pid: int) -> set[int]:
    """Live processes whose parent is `pid` (from /proc: no psutil needed)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited while we looked
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's wait() is missing


def run_command(path: Path, url: str, logs: Path) -> list[str]:
    return [sys.executable, "-m", "hpsearch", "run", str(path), "--db", url, "--workers", "2",
            "--threads", "1", "--log-dir", str(logs)]


@pytest.mark.parametrize(("signum", "code", "name"), [(signal.SIGTERM, 143, "SIGTERM"),
                                                      (signal.SIGHUP, 129, "SIGHUP")])
def test_signal_stops_run_like_ctrl_c_and_the_same_command_resumes(
        sqlite_url: str, tmp_path: Path, signum: int, code: int, name: str) -> None:
    path = slow_study(tmp_path, n_trials=3, epochs=24)  # ~8 s trials: the signal lands mid-trial
    command = run_command(path, sqlite_url, tmp_path / "logs")
    run = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
    wait_for(lambda: any(t.epochs_run >= 1 for t in stored_trials(sqlite_url, "tiny")), 120,
             "a first epoch")
    workers = children(run.pid)
    assert len(workers) == 2
    run.send_signal(signum)
    sent_at = time.monotonic()
    output, _ = run.communicate(timeout=60)
    assert time.monotonic() - sent_at < 30
    assert run.returncode == code, output
    assert output.count(f"Stopped by {name}") == 1, output
    assert "Traceback" not in output
    assert not [pid for pid in workers if alive(pid)]
    trials = stored_trials(sqlite_url, "tiny")
    assert not [t for t in trials if t.state == "running"]
    stopped = {t.number: t.epochs_run for t in trials if t.reason == f"interrupted ({name})"}
    assert any(stopped.values())  # at least one had a checkpoint to resume from
    for log in (tmp_path / "logs").rglob("worker-*.log"):
        assert "Traceback" not in log.read_text()

    resumed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    trials = stored_trials(sqlite_url, "tiny")
    assert len([t for t in trials if t.state in ("complete", "pruned")]) == 3, [
        (t.number, t.state, t.reason, t.retried_from, t.epochs_run) for t in trials]
    # each stopped trial was queued again and resumed from its checkpoint (if it had one): its
    # epochs carried over, not redone. The last recorded epoch may be redone: an epoch is
    # recorded, then checkpointed, and the stop can land between the two (its row is then
    # replaced by the redone epoch's, never duplicated)
    for number, epochs in stopped.items():
        (retry,) = [t for t in trials if t.retried_from == number]
        assert retry.state == "complete"
        carried = max(epochs - 1, 0)
        assert [e.seconds for e in epochs_of(sqlite_url, retry.id)][:carried] == [
            e.seconds for e in epochs_of(sqlite_url, next(
                t.id for t in trials if t.number == number))][:carried]


def test_workers_stop_when_their_launcher_is_killed(sqlite_url: str, tmp_path: Path) -> None:
    """SIGKILL leaves the launcher no chance to pass anything on: the kernel's parent-death
    signal stops the workers, which mark their trials as for any SIGTERM."""
    path = slow_study(tmp_path, n_trials=3, epochs=24)
    run = subprocess.Popen(run_command(path, sqlite_url, tmp_path / "logs"), cwd=ROOT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: any(t.epochs_run >= 1 for t in stored_trials(sqlite_url, "tiny")), 120,
             "a first epoch")
    workers = children(run.pid)
    assert len(workers) == 2
    run.kill()
    run.wait()
    wait_for(lambda: not [pid for pid in workers if alive(pid)], 30, "the workers to exit")
    trials = stored_trials(sqlite_url, "tiny")
    assert not [t for t in trials if t.state == "running"]
    assert any(t.reason == "interrupted (SIGTERM)" for t in trials)


def test_sigterm_stops_a_standalone_worker(sqlite_url: str, tmp_path: Path) -> None:
    path = slow_study(tmp_path, n_trials=2, epochs=24)
    prepare_study(load_study(path), sqlite_url)
    log = tmp_path / "worker.log"
    worker = start_worker("tiny", sqlite_url, log)
    wait_for(lambda: any(t.epochs_run >= 1 for t in stored_trials(sqlite_url, "tiny")), 120,
             "a first epoch")
    os.kill(worker.pid, signal.SIGTERM)
    assert worker.wait(timeout=30) == 143
    text = log.read_text()
    assert "stopped by SIGTERM; a trial it ended resumes from its last checkpoint" in text
    assert "Traceback" not in text
    trials = stored_trials(sqlite_url, "tiny")
    assert [t.reason for t in trials] == ["interrupted (SIGTERM)"]


def test_a_stop_while_a_trial_is_set_up_queues_it_again(sqlite_url: str,
                                                         tmp_path: Path) -> None:
    """The stop lands after Optuna created the trial and before training began (here while
    `precision = "auto"` is measured for this machine, seconds on a fresh cache): the trial is
    queued again like one stopped while training, and the next worker runs it."""
    path = slow_study(tmp_path, n_trials=1, epochs=2)
    path.write_text(path.read_text().replace('precision = "fp32"', 'precision = "auto"'))
    prepare_study(load_study(path), sqlite_url)
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}  # nothing measured yet
    command = [sys.executable, "-m", "hpsearch", "worker", "tiny", "--db", sqlite_url,
               "--threads", "1"]
    worker = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)

    def optuna_states() -> list[optuna.trial.TrialState]:
        return [t.state for t in optuna.load_study(study_name="tiny", storage=sqlite_url).trials]

    wait_for(lambda: optuna_states() == [optuna.trial.TrialState.RUNNING], 120,
             "Optuna's trial")
    os.kill(worker.pid, signal.SIGTERM)
    output = worker.communicate(timeout=60)[0]
    assert worker.returncode == 143, output
    assert "Traceback" not in output, output
    # the stop came before the trial had a row of ours: it was still being set up
    assert stored_trials(sqlite_url, "tiny") == [], "the stop landed after the set-up"
    assert optuna_states() == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.WAITING]

    rerun = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    (trial,) = stored_trials(sqlite_url, "tiny")
    assert (trial.number, trial.state, trial.retried_from) == (1, "complete", 0)
