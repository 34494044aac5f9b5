"""Database faults under a real `hpsearch run`: outages longer than the grace period (each
costs at most the epoch in progress: the trials it ended resume from their checkpoints, nothing
recorded is lost), permanent errors (the run ends within seconds with the reason), a server that
never answers (the connect timeout), and two runs starting together on a fresh database.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from hpsearch.db import engine as engine_module
from hpsearch.db.engine import make_engine
from hpsearch.db.migrate import reading, upgrade
from hpsearch.db.models import Epoch, Trial
from hpsearch.db.trial_slot import TrialSlotLock
from hpsearch.search.launcher import STOP_GRACE_S
from hpsearch.search.study import open_storage
from hpsearch.search.study_file import WorkerOptions
from tests.conftest import PostgresServer
from tests.helpers import assert_nothing_lost, finish, wait_for
from tests.net_faults import BlackHole, CuttableProxy
from tests.study_files import write_tiny_study

pytestmark = pytest.mark.slow
ENV = {**{k: v for k, v in os.environ.items() if not k.startswith("HPSEARCH_")},
       "COLUMNS": "200"}


def study_file(folder: Path, name: str, *, n_trials: int, epochs: int,
               heartbeat: tuple[int, int]) -> Path:
    """Trials of ~0.3 s per epoch: long enough for a fault to land mid-trial."""
    path = write_tiny_study(folder, name, n_trials=n_trials, epochs=epochs, heartbeat=heartbeat)
    path.write_text(path.read_text().replace("synthetic_size = 300", "synthetic_size = 4000"))
    return path


def start_run(path: Path, url: str, folder: Path, workers: int = 1) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "hpsearch", "run", str(path), "--db", url, "--workers",
         str(workers), "--threads", "1", "--device", "cpu", "--log-dir", str(folder / "logs"),
         "--top", "0"],
        cwd=folder, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def logs_of(folder: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted(folder.rglob("*.log")))


def epochs_stored(url: str) -> int:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return conn.scalar(select(func.count()).select_from(Epoch)) or 0
    finally:
        engine.dispose()


def assert_no_crash(output: str, logs: str) -> None:
    """No traceback from the run itself, and no worker thread or trial crashed in the logs
    (a worker log may hold Optuna's traceback of a trial that gave way as surplus)."""
    assert "Traceback" not in output, output
    for crash in ("Exception in thread", "Cannot tell a", "UnboundLocalError"):
        assert crash not in logs, logs


# --- class 1: outages longer than the grace period ---------------------------------------------

def test_sqlite_locked_longer_than_the_grace_period(tmp_path: Path) -> None:
    """A second connection holds the write lock for 8 s, against a 3 s grace period: every
    trial's heartbeat looks stale afterwards. A trial the heartbeat check fails then is dropped
    by its worker and resumed from its checkpoint; nothing recorded is lost."""
    db = tmp_path / "locked.db"
    url = f"sqlite:///{db}"
    path = study_file(tmp_path, "locked", n_trials=3, epochs=8, heartbeat=(1, 3))
    run = start_run(path, url, tmp_path, workers=2)
    try:
        wait_for(lambda: epochs_stored(url) >= 2, 180, "two stored epochs")
        locker = sqlite3.connect(db, isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")
        time.sleep(8)
        locker.execute("COMMIT")
        locker.close()
    finally:
        output = finish(run, 300)
    assert run.returncode == 0, output + logs_of(tmp_path)
    assert_no_crash(output, logs_of(tmp_path))
    assert_nothing_lost(url, "locked", 3, 8)


def test_sqlite_disk_full_for_longer_than_the_grace_period(tmp_path: Path) -> None:
    """The database lives on a small tmpfs that a filler file fills up for 8 s mid-trial
    (grace period 3 s): writes and heartbeats fail with "database or disk is full", the
    workers wait, and once space is freed every trial completes with every epoch once."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)],
                             capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        url = f"sqlite:///{disk / 'full.db'}"
        path = study_file(tmp_path, "full", n_trials=2, epochs=8, heartbeat=(1, 3))
        run = start_run(path, url, tmp_path)
        try:
            try:
                wait_for(lambda: epochs_stored(url) >= 1, 180, "a stored epoch")
            except AssertionError:
                run.kill()
                raise AssertionError(finish(run, 10) + logs_of(tmp_path)) from None
            filler = disk / "filler"
            with open(filler, "wb", buffering=0) as out, contextlib.suppress(OSError):
                while True:  # until ENOSPC
                    out.write(b"\0" * 65536)
            time.sleep(8)
            filler.unlink()
        finally:
            output = finish(run, 300)
        everything = output + logs_of(tmp_path)
        assert run.returncode == 0, everything
        # SQLite says one or the other, depending on which write meets the full disk
        assert "database or disk is full" in everything or "no space left in" in everything
        assert_no_crash(output, everything)
        assert_nothing_lost(url, "full", 2, 8)
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_postgres_heartbeats_blocked_longer_than_the_grace_period(pg_url: str,
                                                                  tmp_path: Path) -> None:
    """A second connection locks Optuna's heartbeat table for 10 s (grace period 4 s): reads
    go on, heartbeat writes wait. Trials failed meanwhile resume from their checkpoints."""
    path = study_file(tmp_path, "blocked", n_trials=3, epochs=10, heartbeat=(1, 4))
    run = start_run(path, pg_url, tmp_path, workers=2)
    try:
        wait_for(lambda: epochs_stored(pg_url) >= 2, 180, "two stored epochs")
        engine = make_engine(pg_url)
        with engine.begin() as conn:
            conn.exec_driver_sql("LOCK TABLE trial_heartbeats IN EXCLUSIVE MODE")
            time.sleep(10)
        engine.dispose()
    finally:
        output = finish(run, 300)
    everything = output + logs_of(tmp_path)
    assert run.returncode == 0, everything
    assert_no_crash(output, everything)
    assert_nothing_lost(pg_url, "blocked", 3, 10)


def test_postgres_unreachable_longer_than_the_grace_period(
        pg_url: str, postgres_server: PostgresServer, tmp_path: Path) -> None:
    """The workers reach PostgreSQL through a proxy that is cut (connections reset, new ones
    refused, the server's ends left half-open) for 12 s, three times the grace period: the
    trials it cuts short resume from their checkpoints, the workers wait between trials. A cut
    that lands inside a transaction (a heartbeat between its UPDATE and COMMIT) leaves that
    row locked until the server ends the session
    (idle_in_transaction_session_timeout, 60 s): the run waits that long at most, not the
    statement timeout (5 min) per blocked heartbeat as it once did."""
    proxy = CuttableProxy(postgres_server.port)
    proxied = make_url(pg_url).set(port=proxy.port).render_as_string(hide_password=False)
    path = study_file(tmp_path, "outage", n_trials=3, epochs=10, heartbeat=(1, 4))
    run = start_run(path, proxied, tmp_path, workers=2)
    try:
        wait_for(lambda: epochs_stored(pg_url) >= 2, 180, "two stored epochs")
        proxy.cut()
        time.sleep(12)
        proxy.restore()
    finally:
        output = finish(run, 300)
        proxy.close()
    everything = output + logs_of(tmp_path)
    assert run.returncode == 0, everything
    assert "retrying" in everything and "database back after" in everything
    assert_no_crash(output, everything)
    assert_nothing_lost(pg_url, "outage", 3, 10)


# A client cut off mid-transaction leaves its session half-open on the server: the server is
# not told (tests/net_faults.py's proxy), so what the session locked stays locked until the
# server ends it. These bound that for every session of ours and Optuna's.
HALF_OPEN_BOUND_MS = 2000  # idle_in_transaction_session_timeout for these tests (default 60 s)


@pytest.fixture
def short_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default bound, shortened so the tests take seconds (it still comes from our engine
    settings, as it does for every session of ours and Optuna's)."""
    monkeypatch.setitem(engine_module.PG_SESSION_SETTINGS, "idle_in_transaction_session_timeout",
                        HALF_OPEN_BOUND_MS)


def _proxied(pg_url: str, proxy: CuttableProxy) -> str:
    return make_url(pg_url).set(port=proxy.port).render_as_string(hide_password=False)


def _seconds_until(action: Callable[[], object], limit: float) -> float | None:
    """How long `action` took in a thread, or None if it had not returned after `limit` s."""
    done = threading.Event()
    started = time.monotonic()
    threading.Thread(target=lambda: (action(), done.set()), daemon=True).start()
    return time.monotonic() - started if done.wait(limit) else None


def _heartbeat(url: str, trial_id: int) -> object:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return conn.exec_driver_sql("SELECT heartbeat FROM trial_heartbeats WHERE "
                                        "trial_id = %s", (trial_id,)).scalar_one()
    finally:
        engine.dispose()


def test_every_session_ends_a_transaction_left_idle_by_a_cut_off_client(pg_url: str) -> None:
    """The bound is on by default, on our engines and on Optuna's storage engine alike; the
    one reading scope is exempt."""
    storage = open_storage(pg_url, WorkerOptions())
    for engine in (make_engine(pg_url), storage.engine):
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW idle_in_transaction_session_timeout"
                                        ).scalar() == "1min"
            assert conn.exec_driver_sql("SHOW tcp_keepalives_idle").scalar() == "30"
        engine.dispose()
    upgrade(pg_url)
    with reading(pg_url) as conn:  # a reader may think between queries: it holds no lock
        assert conn.exec_driver_sql("SHOW idle_in_transaction_session_timeout").scalar() == "0"


@pytest.mark.usefixtures("short_bound")
def test_a_trial_slot_lock_held_by_a_cut_off_worker_is_freed_within_the_bound(
        pg_url: str, postgres_server: PostgresServer) -> None:
    """A worker holding the study's trial-slot lock is cut off from the server: the next
    worker gets the lock once the server ends the half-open session, not hours later."""
    proxy = CuttableProxy(postgres_server.port)
    cut_off = TrialSlotLock(_proxied(pg_url, proxy), 7)
    other = TrialSlotLock(pg_url, 7)
    try:
        cut_off.acquire()
        proxy.cut()
        cut_off.release()  # the worker's release cannot reach the server
        took = _seconds_until(other.acquire, 30)
        assert took is not None, "the lock of the cut-off session was never freed"
        assert took < HALF_OPEN_BOUND_MS / 1000 + 8, took
    finally:
        other.close()
        cut_off.close()
        proxy.close()


@pytest.mark.usefixtures("short_bound")
def test_a_heartbeat_row_locked_by_a_cut_off_session_is_freed_within_the_bound(
        pg_url: str, postgres_server: PostgresServer) -> None:
    """A session of Optuna's storage is cut off between locking a trial's heartbeat row and
    committing (as Optuna's own heartbeat does: SELECT ... FOR UPDATE, UPDATE, COMMIT): the
    next heartbeat of that trial waits for the server to end that session, then is written."""
    study = optuna.create_study(storage=pg_url)
    trial_id = study.ask()._trial_id
    direct = open_storage(pg_url, WorkerOptions(heartbeat_interval=1, grace_period=4))
    direct.record_heartbeat(trial_id)
    proxy = CuttableProxy(postgres_server.port)
    cut_off = open_storage(_proxied(pg_url, proxy), WorkerOptions())
    try:
        conn = cut_off.engine.connect()
        conn.exec_driver_sql("SELECT * FROM trial_heartbeats WHERE trial_id = %s FOR UPDATE",
                             (trial_id,))
        proxy.cut()
        before = _heartbeat(pg_url, trial_id)
        took = _seconds_until(lambda: direct.record_heartbeat(trial_id), 30)
        assert took is not None, "the heartbeat row of the cut-off session was never freed"
        assert took < HALF_OPEN_BOUND_MS / 1000 + 8, took
        assert _heartbeat(pg_url, trial_id) > before  # written, not skipped
        conn.invalidate()
    finally:
        proxy.close()
        cut_off.engine.dispose()
        direct.engine.dispose()


def test_a_stop_during_a_long_outage_ends_within_seconds_and_the_trial_resumes(
        pg_url: str, postgres_server: PostgresServer, tmp_path: Path) -> None:
    """SIGTERM to a run whose database has been unreachable for a while: the worker waiting
    for it stops at once, so the run exits 143 within seconds with no traceback; the trial,
    left running, is resumed from its checkpoint by the same command once the database is
    back (its heartbeat gone stale), its stored epochs carried over, none lost or doubled."""
    proxy = CuttableProxy(postgres_server.port)
    proxied = _proxied(pg_url, proxy)
    path = study_file(tmp_path, "stopped", n_trials=1, epochs=10, heartbeat=(1, 4))
    run = start_run(path, proxied, tmp_path)
    try:
        wait_for(lambda: epochs_stored(pg_url) >= 2, 180, "two stored epochs")
        proxy.cut()
        time.sleep(3)  # the worker is waiting out the outage now
        run.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        output = finish(run, 120)
        took = time.monotonic() - sent
    finally:
        proxy.close()
    everything = output + logs_of(tmp_path)
    assert run.returncode == 143, everything
    # the worker ended by itself (the launcher kills one still running after STOP_GRACE_S,
    # 20 s, and would then say "worker 0 failed")
    assert "Stopped by SIGTERM" in output and "failed (" not in output, output
    # without the stop the worker waits out the outage for as long as it lasts (finish's 120 s
    # would run out); the product's 15 s is for an idle machine, this bound leaves room for load
    assert took < 60, f"{took:.1f} s: {everything}"
    assert "Traceback" not in everything, everything
    assert "resumes from its last checkpoint in the next run" in everything
    carried = epochs_stored(pg_url)

    again = start_run(path, pg_url, tmp_path)  # the same command, the database back
    output = finish(again, 300)
    assert again.returncode == 0, output + logs_of(tmp_path)
    engine = make_engine(pg_url)
    with Session(engine) as session:
        trials = {t.number: t for t in session.scalars(select(Trial))}
        epochs = {n: [(e.epoch, e.seconds) for e in session.scalars(
            select(Epoch).where(Epoch.trial_id == t.id).order_by(Epoch.epoch))]
            for n, t in trials.items()}
    engine.dispose()
    assert trials[0].state == "failed" and "no heartbeat" in trials[0].reason, trials[0].reason
    assert 1 in trials, output + logs_of(tmp_path)
    assert trials[1].state == "complete" and trials[1].retried_from == 0
    assert [e for e, _ in epochs[1]] == list(range(1, 11))  # each epoch once
    assert epochs[1][:carried - 1] == epochs[0][:carried - 1]  # carried over, not retrained
    assert "resuming from" in logs_of(tmp_path)


# --- class 2: permanent errors end the run at once ---------------------------------------------

def _chattr(flag: str, *paths: Path) -> None:
    """chattr each path; one that vanished meanwhile (SQLite removes its -wal and -shm files
    when the last connection closes) is skipped, any other failure is an error."""
    for path in paths:
        done = subprocess.run(["chattr", flag, str(path)], capture_output=True, text=True)
        if done.returncode != 0 and path.exists():
            raise AssertionError(f"chattr {flag} {path}: {done.stderr.strip()}")


FAULTS = {  # the reason the run must give (SQLite words a truncated file either way)
    "drop-table": ("no such table: hps_epoch",),
    # a new connection finds an empty file (whichever table the next statement reads first); one
    # still open on the deleted -wal/-shm files gets an I/O error: which comes first is timing
    "delete-file": ("no such table", "disk I/O error"),
    "truncate-file": ("database disk image is malformed", "file is not a database"),
    # read-only: a write fails, or (when SQLite must create its -wal file anew) the open does,
    # or a connection still open on the -wal/-shm files fails to write them
    "read-only": ("attempt to write a readonly database", "unable to open database file",
                  "disk I/O error"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_permanent_database_errors_end_the_run_within_seconds(fault: str,
                                                              tmp_path: Path) -> None:
    """Mid-trial, the database breaks for good: the run ends within seconds (not after a
    retry window), the reason on one line, no traceback; where the database can still be
    written, the trial is failed with that reason rather than left running."""
    folder = tmp_path / "db"
    folder.mkdir()
    db = folder / "broken.db"
    url = f"sqlite:///{db}"
    path = study_file(tmp_path, "broken", n_trials=2, epochs=40, heartbeat=(1, 4))
    if fault == "read-only" and (os.geteuid() != 0 or shutil.which("chattr") is None):
        pytest.skip("read-only needs chattr as root (file modes do not stop root)")
    run = start_run(path, url, tmp_path)
    immutable: list[Path] = []
    try:
        wait_for(lambda: epochs_stored(url) >= 1, 180, "a stored epoch")
        if fault == "drop-table":
            with sqlite3.connect(db) as conn:
                conn.execute("DROP TABLE hps_epoch")
        elif fault == "delete-file":
            for file in folder.iterdir():
                file.unlink()
        elif fault == "truncate-file":
            with sqlite3.connect(db) as conn:  # everything into the main file, then cut it
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            os.truncate(db, 1000)
        else:
            # root ignores file modes; the immutable attribute stops it (ext4, as root)
            immutable = [*folder.iterdir(), folder]
            _chattr("+i", *immutable)
        broken_at = time.monotonic()
        output = finish(run, 120)
        took = time.monotonic() - broken_at
    finally:
        if immutable:
            _chattr("-i", *immutable)
        if run.poll() is None:
            run.kill()
    everything = output + logs_of(tmp_path)
    assert run.returncode == 1, everything
    assert took < 30, f"{took:.0f} s: {everything}"
    assert "Traceback" not in everything and "UnboundLocalError" not in everything, everything
    assert "retrying" not in everything, everything
    (failure,) = [line for line in output.splitlines() if line.startswith("worker 0 failed")]
    assert any(reason in failure for reason in FAULTS[fault]), output
    assert "hpsearch: error: cannot use database sqlite:///" in failure
    if fault == "drop-table":  # the tables that remain tell what happened
        engine = make_engine(url)
        with Session(engine) as session:
            trials = list(session.scalars(select(Trial)))
        engine.dispose()
        assert [t.state for t in trials] == ["failed"]
        assert "no such table: hps_epoch" in (trials[0].reason or "")
        states = [t.state for t in optuna.load_study(study_name="broken", storage=url).trials]
        assert states == [optuna.trial.TrialState.FAIL]


# --- class 3: a server that accepts TCP and never answers ---------------------------------------

def test_a_silent_server_ends_studies_and_run_within_the_connect_timeout(
        tmp_path: Path) -> None:
    path = write_tiny_study(tmp_path, "silent")
    with BlackHole() as hole:
        url = f"postgresql://u:secret@127.0.0.1:{hole.port}/db"
        for args, bound in ((["studies", "--db", url], 10),  # the default connect timeout
                            (["run", str(path), "--db", f"{url}?connect_timeout=2"], 2)):
            started = time.monotonic()
            done = subprocess.run([sys.executable, "-m", "hpsearch", *args], cwd=tmp_path,
                                  env=ENV, capture_output=True, text=True, timeout=120)
            took = time.monotonic() - started
            assert done.returncode == 2, done.stdout + done.stderr
            assert took < bound + 8, f"{args[0]}: {took:.1f} s"
            (line,) = done.stderr.splitlines()
            assert line.startswith("hpsearch: error: cannot use database postgresql"), line
            assert "timeout" in line and "secret" not in done.stdout + done.stderr


def test_a_server_gone_silent_mid_run_is_stopped_within_seconds_and_resumed(
        pg_url: str, postgres_server: PostgresServer, tmp_path: Path) -> None:
    """Mid-trial, every open connection of the run goes silent (TCP alive, replies lost: a
    stuck middlebox or server process); new connections work. libpq has no bound on a reply
    that never comes (tcp_user_timeout and keepalives see a live peer), so the run waits: a
    SIGTERM ends it within seconds (a worker stuck in a call is killed after the launcher's
    grace), and the same command resumes the trial from its checkpoint, nothing lost."""
    proxy = CuttableProxy(postgres_server.port)
    proxied = make_url(pg_url).set(port=proxy.port).render_as_string(hide_password=False)
    path = study_file(tmp_path, "silent", n_trials=2, epochs=8, heartbeat=(1, 4))
    run = start_run(path, proxied, tmp_path, workers=1)
    try:
        wait_for(lambda: epochs_stored(pg_url) >= 2, 180, "two stored epochs")
        proxy.mute()
        time.sleep(2)
        run.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        output = finish(run, 120)
        took = time.monotonic() - sent
    finally:
        proxy.close()
    assert run.returncode == 143, output + logs_of(tmp_path)
    assert took < STOP_GRACE_S + 10, f"{took:.1f} s"
    assert "Traceback" not in output, output

    epochs_before = epochs_stored(pg_url)
    again = start_run(path, pg_url, tmp_path)  # the same command, the server answering again
    output = finish(again, 300)
    everything = output + logs_of(tmp_path)
    assert again.returncode == 0, everything
    # Nothing recorded is lost, and every trial ends. A trial whose end was recorded while its
    # tell to Optuna hung counts as failed in Optuna (the heartbeat check's verdict), so the
    # study may run one trial more than n_trials
    assert epochs_stored(pg_url) >= epochs_before
    states = [t.state for t in optuna.load_study(study_name="silent", storage=pg_url).trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 2, states
    assert optuna.trial.TrialState.RUNNING not in states, states


# --- class 6: two first starts on a fresh PostgreSQL database -----------------------------------

def test_two_runs_starting_together_on_a_fresh_postgres_database(pg_url: str,
                                                                 tmp_path: Path) -> None:
    """Both create Optuna's tables and ours at once: serialised under one advisory lock, so
    neither fails (an unlocked Optuna schema creation raises UniqueViolation)."""
    path = write_tiny_study(tmp_path, "together", n_trials=2, epochs=1)
    runs: list[subprocess.Popen[str]] = []
    gate = threading.Barrier(3)

    def start(index: int) -> None:
        folder = tmp_path / f"run{index}"
        folder.mkdir()
        gate.wait()
        runs.append(start_run(path, pg_url, folder))

    threads = [threading.Thread(target=start, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    outputs = [finish(run, 300) for run in runs]
    for run, output in zip(runs, outputs, strict=True):
        assert run.returncode == 0, output
        assert "Traceback" not in output and "UniqueViolation" not in output, output
    states = [t.state for t in optuna.load_study(study_name="together", storage=pg_url).trials
              if not t.user_attrs.get("surplus")]
    assert states.count(optuna.trial.TrialState.COMPLETE) >= 2
