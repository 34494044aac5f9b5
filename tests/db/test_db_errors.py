"""The one classification of database errors and the one place that waits (a worker, between
trials), on real faults: a lock held by a second connection, a dropped table, a read-only or
corrupt file, a refused or silent server."""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
import threading
import time
from pathlib import Path

import optuna
import pytest
from sqlalchemy import text

from hpsearch.db.engine import engine_kwargs, make_engine
from hpsearch.db.errors import DatabaseError, DuplicateRowError, as_database_error
from hpsearch.db.migrate import upgrade
from hpsearch.db.models import Study, Trial
from hpsearch.db.recorder import Recorder
from hpsearch.db.session import connection_scope, session_scope
from hpsearch.errors import TrialLost
from hpsearch.metrics import EpochMetrics
from hpsearch.search.worker import until_the_database_answers
from tests.net_faults import BlackHole


def error_of(url: str, sql: str) -> DatabaseError:
    engine = make_engine(url)
    try:
        with pytest.raises(DatabaseError) as caught, connection_scope(engine) as conn:
            conn.execute(text(sql))
    finally:
        engine.dispose()
    return caught.value


def test_sqlite_errors_are_classified(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    url = f"sqlite:///{path}"
    with connection_scope(make_engine(url)) as conn:
        conn.execute(text("CREATE TABLE t (x INTEGER)"))

    missing = error_of(url, "SELECT * FROM hps_epoch")
    assert not missing.transient and "no such table: hps_epoch" in str(missing)

    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        locked = error_of(f"{url}?timeout=0.1", "INSERT INTO t VALUES (1)")
    finally:
        locker.execute("COMMIT")
        locker.close()
    assert locked.transient and "database is locked" in str(locked)

    read_only = error_of(f"sqlite:///file:{path}?mode=ro&uri=true", "INSERT INTO t VALUES (1)")
    assert not read_only.transient and "readonly" in str(read_only)

    with pytest.raises(DatabaseError) as caught, connection_scope(make_engine(url)) as conn:
        conn.exec_driver_sql("PRAGMA max_page_count = 2")  # the file may not grow: SQLITE_FULL
        conn.exec_driver_sql("INSERT INTO t VALUES (zeroblob(100000))")
    full = caught.value
    assert full.transient and "full" in str(full)  # freeing space heals it: waited out

    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database" * 400)
    corrupt = error_of(f"sqlite:///{junk}", "SELECT 1 FROM t")
    assert not corrupt.transient and "file is not a database" in str(corrupt)
    # one line, URL named
    for error in (missing, locked, read_only, full, corrupt):
        assert "\n" not in str(error) and str(error).startswith("cannot use database sqlite")


def test_postgres_errors_are_classified(pg_url: str) -> None:
    undefined = error_of(pg_url, "SELECT * FROM hps_epoch")
    assert not undefined.transient and "hps_epoch" in str(undefined)
    no_database = error_of(pg_url.rsplit("/", 1)[0] + "/no_such_db", "SELECT 1")
    assert not no_database.transient and "does not exist" in str(no_database)
    with BlackHole() as hole:
        refused_port = hole.port
    refused = error_of(f"postgresql+psycopg://u:secret@127.0.0.1:{refused_port}/x", "SELECT 1")
    assert refused.transient and "secret" not in str(refused)


def test_a_silent_server_times_out_and_counts_as_transient() -> None:
    with BlackHole() as hole:
        started = time.monotonic()
        silent = error_of(f"postgresql://u@127.0.0.1:{hole.port}/x?connect_timeout=2",
                          "SELECT 1")
        waited = time.monotonic() - started
    assert silent.transient and "timeout" in str(silent).lower()
    assert 1.5 < waited < 8


def test_timeouts_default_on_and_the_url_wins() -> None:
    args = engine_kwargs("postgresql+psycopg://h/d")["connect_args"]
    assert args["connect_timeout"] == 10 and args["keepalives"] == 1
    assert "statement_timeout=300000" in args["options"]
    assert "idle_in_transaction_session_timeout=60000" in args["options"]
    mine = engine_kwargs("postgresql+psycopg://h/d?connect_timeout=3"
                         "&options=-c%20statement_timeout%3D5")["connect_args"]
    assert "connect_timeout" not in mine  # the URL's values apply, the other defaults stay
    assert mine["options"].startswith("-c statement_timeout=5 -c idle_in_transaction")
    assert "statement_timeout=300000" not in mine["options"]
    assert engine_kwargs("sqlite:///x.db?timeout=2")["connect_args"]["timeout"] == 2.0


def test_a_worker_waits_out_a_lock_between_trials_and_fails_fast_on_a_permanent_error(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "r.db"
    url = f"sqlite:///{path}?timeout=0.2"  # each attempt gives up quickly: the retries show
    upgrade(url)
    recorder = Recorder(make_engine(url))
    optuna_id = optuna.create_study(study_name="s", storage=url)._study_id  # our row links to it
    study = recorder.ensure_study("s", optuna_id, {}, {"n_trials": 2}, "synthetic")
    trial = recorder.start_trial(study, 0, 1, {}, [], "w", None, seed=0)
    metrics = EpochMetrics(epoch=1, train_loss=1.0, train_acc=0.5, val_loss=1.0, val_acc=0.5,
                           lr=0.01, seconds=1.0, images_per_s=10.0)

    locker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    locker.execute("BEGIN EXCLUSIVE")
    with pytest.raises(DatabaseError, match="database is locked") as caught:
        recorder.record_epoch(trial, metrics)  # inside a trial: no waiting, the trial ends
    assert caught.value.transient
    release = threading.Timer(2.0, lambda: locker.execute("COMMIT"))
    release.start()
    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        until_the_database_answers(lambda: recorder.record_epoch(trial, metrics), url)
    release.join()
    locker.close()
    assert time.monotonic() - started >= 1.5
    assert "database unavailable (database is locked); retrying" in caplog.text
    assert "database back after" in caplog.text

    with connection_scope(make_engine(url)) as conn:
        conn.execute(text("DROP TABLE hps_epoch"))
    started = time.monotonic()
    with pytest.raises(DatabaseError, match="no such table: hps_epoch") as caught:
        until_the_database_answers(lambda: recorder.record_epoch(trial, metrics), url)
    assert not caught.value.transient and time.monotonic() - started < 1.0


def test_a_trial_failed_elsewhere_takes_no_more_writes(tmp_path: Path) -> None:
    """Once the heartbeat check has failed a trial, the worker that ran it (frozen, then woken)
    can neither add an epoch to it nor end it: TrialLost, and its rows stay as they were."""
    url = f"sqlite:///{tmp_path / 'r.db'}"
    upgrade(url)
    recorder = Recorder(make_engine(url))
    optuna_id = optuna.create_study(study_name="s", storage=url)._study_id
    study = recorder.ensure_study("s", optuna_id, {}, {"n_trials": 2}, "synthetic")
    trial = recorder.start_trial(study, 0, 7, {}, [], "w", None, seed=0)
    metrics = EpochMetrics(epoch=1, train_loss=1.0, train_acc=0.5, val_loss=1.0, val_acc=0.5,
                           lr=0.01, seconds=1.0, images_per_s=10.0)
    recorder.record_epoch(trial, metrics)
    recorder.mark_dead(7, "no heartbeat")
    with pytest.raises(TrialLost):
        recorder.record_epoch(trial, dataclasses.replace(metrics, epoch=2))
    with pytest.raises(TrialLost):
        recorder.finish_trial(trial, "complete", 1.0, None)
    with session_scope(make_engine(url)) as session:
        row = session.get(Trial, trial)
        assert (row.state, row.reason, row.epochs_run) == ("failed", "no heartbeat", 1)
        assert session.scalar(text("SELECT count(*) FROM hps_epoch")) == 1


def test_session_scope_rolls_back_and_names_duplicates(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'd.db'}"
    upgrade(url)
    engine = make_engine(url)
    row = {"name": "s", "optuna_study_id": 1, "spec": {}, "settings": {},
           "dataset": "synthetic"}
    with session_scope(engine) as session:
        session.add(Study(**row))
    with pytest.raises(DuplicateRowError), session_scope(engine) as session:
        session.add(Study(**{**row, "optuna_study_id": 2}))
    with pytest.raises(ZeroDivisionError), session_scope(engine) as session:
        session.add(Study(**{**row, "name": "t"}))
        session.flush()
        _ = 1 / 0  # not a database error: raised as it is, and the insert is rolled back
    with connection_scope(engine) as conn:
        assert conn.scalar(text("SELECT count(*) FROM hps_study")) == 1


def test_a_driver_message_hides_the_password_it_echoes_and_only_that() -> None:
    """A password the driver echoes is hidden; a short one is not replaced wherever its letters
    occur (that garbled every message, "c***nnecti***n", and spelled the password out)."""
    from sqlalchemy.exc import OperationalError

    refused = ("connection to server at \"127.0.0.1\", port 1 failed: Connection refused\n"
               "\tIs the server running on that host and accepting TCP/IP connections?")
    short = as_database_error(OperationalError("SELECT 1", {}, Exception(refused)),
                              "postgresql+psycopg://u:o@127.0.0.1:1/db")
    assert short is not None and short.reason == " ".join(
        line.strip() for line in refused.splitlines())
    echoed = as_database_error(
        OperationalError("SELECT 1", {}, Exception("bad password hunter2-s3cret for u")),
        "postgresql+psycopg://u:hunter2-s3cret@127.0.0.1:1/db")
    assert echoed is not None and "hunter2" not in echoed.reason and "***" in echoed.reason
