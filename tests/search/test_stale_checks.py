"""What idle and waiting workers cost the database (issue 15: with a stale-trial check per
worker per interval and a 0.25 s idle poll, the statements per trial grew with the number of
workers): one stale-trial check per study per interval, and idle polls that back off."""

from __future__ import annotations

import fcntl
import subprocess
import sys
import threading
from pathlib import Path

import optuna
import pytest
from sqlalchemy import event

from hpsearch.db.engine import make_engine
from hpsearch.db.optuna_tables import claim_stale_check
from hpsearch.db.session import connection_scope
from hpsearch.db.trial_slot import TrialSlotLock
from hpsearch.search import worker as runner
from hpsearch.search.study import open_storage, prepare_study
from hpsearch.search.study_file import WorkerOptions, load_study
from tests.helpers import stored_trials, wait_for
from tests.study_files import write_tiny_study

ROOT = Path(__file__).resolve().parents[2]


def _claim(url: str, study_id: int, now: float, interval: float) -> bool:
    engine = make_engine(url)  # each claim on its own connection, as separate workers
    try:
        with connection_scope(engine) as conn:
            return claim_stale_check(conn, study_id, now, interval)
    finally:
        engine.dispose()


def test_of_many_workers_asking_one_checks_per_interval(db_url: str, tmp_path: Path) -> None:
    prepare_study(load_study(write_tiny_study(tmp_path)), db_url)
    study_id = optuna.load_study(study_name="tiny", storage=db_url)._study_id
    assert _claim(db_url, study_id, 1000.0, 5) is True  # the study's first check
    assert [_claim(db_url, study_id, 1000.0 + t, 5) for t in (0.1, 1, 4.9)] == [False] * 3
    assert _claim(db_url, study_id, 1005.0, 5) is True  # an interval later: one more
    assert _claim(db_url, study_id, 1005.5, 5) is False


def test_workers_stale_checks_cost_one_update_each_when_another_checked(
        db_url: str, tmp_path: Path) -> None:
    prepare_study(load_study(write_tiny_study(tmp_path)), db_url)
    storages = [open_storage(db_url, WorkerOptions(heartbeat_interval=1, grace_period=8))
                for _ in range(8)]  # eight workers' storages; interval 8 / 4 = 2 s
    study_id = storages[0].get_study_id_from_name("tiny")
    statements: list[str] = []
    for storage in storages:
        event.listen(storage.engine, "before_cursor_execute",
                     lambda *args: statements.append(args[2]))
    for storage in storages:
        assert storage._get_stale_trial_ids(study_id) == []
    # one made the check (the one read of the study's trials); the others were told no
    reads_of_trials = [s for s in statements if "FROM trials" in s]
    assert len(reads_of_trials) == 1, reads_of_trials
    for storage in storages:
        storage.engine.dispose()


def test_an_idle_worker_polls_less_and_less_often(sqlite_url: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_tiny_study(tmp_path, n_trials=1, epochs=4, dry_run=2.0)
    prepare_study(load_study(path), sqlite_url)
    busy = subprocess.Popen([sys.executable, "-m", "hpsearch", "worker", "tiny", "--db",
                             sqlite_url], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: [t.state for t in stored_trials(sqlite_url, "tiny")] == ["running"],
                 120, "the other worker's trial")
        waits: list[float] = []
        real_wait = runner.stop_wait
        monkeypatch.setattr(runner, "stop_wait", lambda s: (waits.append(s), real_wait(s)))
        runner.run_worker("tiny", sqlite_url)  # nothing to do until the other trial ends
    finally:
        busy.wait(timeout=120)
    assert len(waits) >= 4, waits
    assert waits[:4] == [0.25, 0.5, 1.0, 2.0]
    assert max(waits) <= runner.WAIT_POLL_MAX_S


def _slot_taken(sqlite_path: str) -> bool:
    """Whether some thread or process holds the study's trial-slot lock (SQLite: an flock)."""
    with open(f"{sqlite_path}.trial-lock", "ab") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        return False


def test_the_watcher_fails_and_queues_again_under_the_trial_slot_lock(
        sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Seen under load: a worker counted the trials after the heartbeat check had failed a dead
    trial but before it had queued the retry, started a new trial in the retry's place, and the
    study ended with its trials and the retry left waiting. The check (failing, then queueing)
    now holds the lock under which a worker counts and asks."""
    prepare_study(load_study(write_tiny_study(tmp_path)), sqlite_url)
    storage = open_storage(sqlite_url, WorkerOptions(heartbeat_interval=1, grace_period=4))
    study = optuna.load_study(study_name="tiny", storage=storage)
    path = sqlite_url.removeprefix("sqlite:///")
    held: list[bool] = []
    monkeypatch.setattr(runner, "_fail_stale", lambda _study: held.append(_slot_taken(path)))
    watcher = runner.StaleTrialWatcher(study, storage,
                                       TrialSlotLock(sqlite_url, study._study_id))
    watcher.start()
    try:
        wait_for(lambda: held, 60, "a stale-trial check")
    finally:
        watcher.stop()
    assert held[0] is True
    assert not _slot_taken(path)  # and released after it


def test_a_frozen_holder_of_the_trial_slot_lock_delays_others_only_its_grace_period(
        sqlite_url: str, tmp_path: Path) -> None:
    """Seen under load: a worker stopped (SIGSTOP) while its heartbeat check held the lock
    kept the other worker from ever starting a trial or queueing the retry. On SQLite the lock
    is an flock that only the holder's exit releases, so a waiter gives up after `wait_s`."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, signal, sys\n"
         f"f = open({sqlite_url.removeprefix('sqlite:///') + '.trial-lock'!r}, 'ab')\n"
         "fcntl.flock(f.fileno(), fcntl.LOCK_EX)\nprint('held', flush=True)\n"
         "os.kill(os.getpid(), signal.SIGSTOP)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        waiter = TrialSlotLock(sqlite_url, 1, wait_s=0.5)
        done = threading.Event()
        thread = threading.Thread(target=lambda: (waiter.acquire(), done.set()), daemon=True)
        thread.start()
        assert done.wait(60), "still waiting for a frozen holder's lock"
        waiter.release()  # nothing held: a no-op
        assert not waiter._handle
    finally:
        holder.kill()
        holder.wait()
    free = TrialSlotLock(sqlite_url, 1, wait_s=0.5)
    free.acquire()  # the holder gone, the lock is taken
    assert free._handle is not None
    free.close()
