"""A study's central stop, pause and target (`hpsearch study stop|pause|resume`, `[study]
target`): every worker of a real 2-worker `hpsearch run` (dry-run trials) obeys the state in
the database, and nothing recorded is lost."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import optuna
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hpsearch.db.engine import make_engine
from hpsearch.db.models import Epoch, Study, Trial
from hpsearch.errors import ConfigError
from hpsearch.search.study_file import load_study, parse_study
from tests.helpers import finish, hps, wait_for
from tests.study_files import write_tiny_study

EPOCH_S = 1.0  # a dry-run epoch: a sleep
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def start_run(path: Path, url: str, folder: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "hpsearch", "run", str(path), "--db", url, "--workers", "2",
         "--threads", "1", "--log-dir", str(folder / "logs"), "--top", "0"],
        cwd=folder, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def rows(url: str, name: str) -> list[Trial]:
    with Session(make_engine(url), expire_on_commit=False) as session:
        return list(session.scalars(select(Trial).join(Study).where(Study.name == name)
                                    .order_by(Trial.number)))


def epochs(url: str) -> dict[int, int]:
    """Epoch rows per trial row id."""
    with Session(make_engine(url)) as session:
        return dict(session.execute(select(Epoch.trial_id, func.count())
                                    .group_by(Epoch.trial_id)).all())


def both_training(url: str, name: str) -> bool:
    running = [t for t in rows(url, name) if t.state == "running"]
    counts = epochs(url)
    return len(running) == 2 and all(counts.get(t.id, 0) >= 1 for t in running)


def study(tmp_path: Path, name: str, *, n_trials: int, epochs_: int, target: str = "") -> Path:
    # a long grace period: on a loaded machine a late heartbeat must not fail a trial here
    path = write_tiny_study(tmp_path, name, n_trials=n_trials, epochs=epochs_, dry_run=EPOCH_S,
                            heartbeat=(1, 60))
    if target:
        path.write_text(path.read_text().replace("seed = 0", f"seed = 0\ntarget = {target}"))
    return path


def test_stop_ends_a_two_worker_study_at_the_next_epoch_and_resume_continues_it(
        sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    path = study(tmp_path, "central", n_trials=3, epochs_=40)  # a trial: 40 s
    run = start_run(path, sqlite_url, tmp_path)
    try:
        wait_for(lambda: both_training(sqlite_url, "central"), 90, "both workers training")
    except BaseException:
        print(finish(run, 5))
        raise
    code, out, err = hps(capsys, monkeypatch, "study", "stop", "central", "--db", sqlite_url)
    assert code == 0, err
    assert "each worker ends its trial at its next epoch" in out
    at_stop = epochs(sqlite_url)
    output = finish(run)
    # each trial ran on by one epoch at most (counted in epochs, not seconds: a loaded machine
    # stretches seconds, and a stop that did not work would let the trials run all 40 epochs)
    assert run.returncode == 0, output
    assert "study 'central' is stopped (stopped by `hpsearch study stop`)" in output, output
    after = epochs(sqlite_url)
    stopped = [t for t in rows(sqlite_url, "central") if t.state == "failed"]
    assert len(stopped) == 2
    for trial in stopped:
        assert after[trial.id] - at_stop.get(trial.id, 0) <= 1
        assert trial.reason == ("stopped by `hpsearch study stop`: ended at an epoch's end, "
                                "to resume")
    # a stopped study starts nothing, and says why
    code, out, _ = hps(capsys, monkeypatch, "studies", "--db", sqlite_url)
    assert "stopped" in out
    again = start_run(path, sqlite_url, tmp_path)
    assert "is stopped" in finish(again) and again.returncode == 0
    assert len(rows(sqlite_url, "central")) == 2
    # resumed: the same command continues; every stopped trial is queued again and finished
    code, out, _ = hps(capsys, monkeypatch, "study", "resume", "central", "--db", sqlite_url)
    assert code == 0 and "resumed" in out
    ostudy = optuna.load_study(study_name=load_study(path).name, storage=sqlite_url)
    queued = [t for t in ostudy.get_trials() if t.state == optuna.trial.TrialState.WAITING]
    assert len(queued) == 2  # nothing lost: both stopped trials wait to be resumed
    for trial in stopped:  # and their recorded epochs stay
        assert epochs(sqlite_url)[trial.id] == after[trial.id]


def test_pause_lets_running_trials_finish_and_resume_continues(
        sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    path = study(tmp_path, "paused", n_trials=30, epochs_=2)  # 30 s of work for 2 workers
    run = start_run(path, sqlite_url, tmp_path)
    wait_for(lambda: both_training(sqlite_url, "paused"), 90, "both workers training")
    code, out, err = hps(capsys, monkeypatch, "study", "pause", "paused", "--db", sqlite_url)
    assert code == 0 and "each worker finishes its trial and leaves" in out, err
    output = finish(run)
    assert run.returncode == 0 and "study 'paused' is paused" in output, output
    done = rows(sqlite_url, "paused")
    assert 2 <= len(done) < 30 and {t.state for t in done} == {"complete"}, (
        [(t.number, t.state, t.reason) for t in done], output)
    code, out, _ = hps(capsys, monkeypatch, "study", "resume", "paused", "--db", sqlite_url)
    assert code == 0
    again = start_run(path, sqlite_url, tmp_path)
    output = finish(again)
    assert again.returncode == 0, output
    assert [t.state for t in rows(sqlite_url, "paused")] == ["complete"] * 30


def test_a_reached_target_stops_the_study(sqlite_url: str, tmp_path: Path) -> None:
    """target = 0: the first complete trial reaches it; the study stops for both workers."""
    path = study(tmp_path, "aimed", n_trials=20, epochs_=2, target="0.0")
    run = start_run(path, sqlite_url, tmp_path)
    output = finish(run)
    assert run.returncode == 0, output
    assert "study 'aimed' is stopped (target val_acc >= 0 reached" in output, output
    assert len(rows(sqlite_url, "aimed")) < 20


def test_a_target_needs_one_objective(tmp_path: Path) -> None:
    raw = tomllib.loads(study(tmp_path, "two", n_trials=2, epochs_=2, target="0.9").read_text())
    assert load_study(study(tmp_path, "one", n_trials=2, epochs_=2, target="0.9")).target == 0.9
    both = {**raw["study"], "objectives": ["val_acc:max", "params:min"]}
    with pytest.raises(ConfigError, match="target stops a study of one objective"):
        parse_study({**raw, "study": both})
