"""PostgreSQL restarted in the middle of a study: `hpsearch run` with two workers rides it out.

The server is stopped (clients disconnected) while trials are training, stays down for a few
seconds and comes back on the same port. A trial whose write meets the outage ends there and is
resumed from its checkpoint; the workers wait between trials, the launcher's view waits, the
heartbeat threads skip a beat; nothing recorded is lost, nothing is written twice.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from sqlalchemy import select, text

from hpsearch.db.engine import make_engine
from hpsearch.db.errors import as_database_error
from hpsearch.db.models import Epoch, Trial
from hpsearch.search.study import open_storage
from hpsearch.search.study_file import WorkerOptions
from hpsearch.search.worker import until_the_database_answers
from tests.conftest import PostgresServer
from tests.helpers import assert_nothing_lost, wait_for
from tests.study_files import write_tiny_study

ROOT = Path(__file__).resolve().parents[2]
N_TRIALS = 4
EPOCHS = 12
DOWN_S = 4.0
# heartbeats every second; a trial counts as dead only after 20 s without one, longer than the
# outage, so a live trial must not be failed (a dead heartbeat thread would be noticed below)
HEARTBEAT = (1, 20)
pytestmark = pytest.mark.slow

EPOCH_COLUMNS = (Epoch.trial_id, Epoch.epoch, Epoch.train_loss, Epoch.train_acc, Epoch.val_loss,
                 Epoch.val_acc, Epoch.lr, Epoch.seconds, Epoch.images_per_s)


def slow_study(folder: Path) -> Path:
    path = write_tiny_study(folder, "restart", n_trials=N_TRIALS, epochs=EPOCHS,
                            heartbeat=HEARTBEAT)
    path.write_text(path.read_text().replace("synthetic_size = 300", "synthetic_size = 4000"))
    return path


def epoch_rows(url: str) -> dict[tuple[int, int], tuple]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return {(r[0], r[1]): tuple(r) for r in conn.execute(select(*EPOCH_COLUMNS))}
    finally:
        engine.dispose()


def finished_trial_rows(url: str) -> dict[int, tuple]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return {r.id: tuple(r) for r in conn.execute(select(Trial).where(
                Trial.state.in_(("complete", "pruned", "failed"))))}
    finally:
        engine.dispose()


def heartbeat_ages(url: str) -> dict[int, float]:
    """Optuna trial id → seconds since its last heartbeat, for every running trial."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text(
                "SELECT t.trial_id, EXTRACT(EPOCH FROM (now() - h.heartbeat)) "
                "FROM trials t JOIN trial_heartbeats h ON h.trial_id = t.trial_id "
                "WHERE t.state = 'RUNNING'")).all()
    finally:
        engine.dispose()
    return {trial_id: float(age) for trial_id, age in rows}




def test_run_survives_a_postgres_restart(pg_url: str, postgres_server: PostgresServer,
                                         tmp_path: Path) -> None:
    path = slow_study(tmp_path)
    logs = tmp_path / "logs"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPSEARCH_")}
    env["COLUMNS"] = "200"
    run = subprocess.Popen(
        [sys.executable, "-m", "hpsearch", "run", str(path), "--db", pg_url, "--workers", "2",
         "--threads", "1", "--device", "cpu", "--log-dir", str(logs), "--top", "0"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # both workers training, and some epochs stored
        wait_for(lambda: len(epoch_rows(pg_url)) >= 2 and len(heartbeat_ages(pg_url)) >= 2,
                 180, "two running trials and two stored epochs")
        assert run.poll() is None, run.communicate()[0]
        before_epochs = epoch_rows(pg_url)
        before_trials = finished_trial_rows(pg_url)

        postgres_server.restart(down_s=DOWN_S)  # fast shutdown: every connection is cut
        restarted_at = time.monotonic()
        output, _ = run.communicate(timeout=300)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    worker_logs = {p.name: p.read_text(errors="replace") for p in sorted(logs.rglob("*.log"))}
    assert run.returncode == 0, output + str(worker_logs)
    assert time.monotonic() - restarted_at < 240
    # the outage was noticed and waited out, not silently skipped, and no thread died of it
    everything = output + "".join(worker_logs.values())
    assert "retrying" in everything, worker_logs
    assert "Exception in thread" not in everything and "Traceback" not in everything, everything

    assert_nothing_lost(pg_url, "restart", N_TRIALS, EPOCHS)
    # rows written before the restart are intact
    after_epochs = epoch_rows(pg_url)
    for key, row in before_epochs.items():
        assert after_epochs[key] == row
    after_trials = finished_trial_rows(pg_url)
    for key, row in before_trials.items():
        assert after_trials[key] == row
    ostudy = optuna.load_study(study_name="restart", storage=pg_url)
    for frozen in ostudy.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE]):
        assert sorted(frozen.intermediate_values) == list(range(1, EPOCHS + 1))


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")
def test_a_restart_ends_the_call_under_way_and_a_worker_waits_for_the_server_between_trials(
        pg_url: str, postgres_server: PostgresServer, caplog: pytest.LogCaptureFixture) -> None:
    """The storage the workers use: a call while the server is down fails at once as a
    transient error (inside a trial, it ends the trial), a heartbeat that cannot be written is
    skipped instead of ending the heartbeat thread, the worker's wait between trials waits for
    the server, and real errors are not waited for."""
    storage = open_storage(pg_url, WorkerOptions(heartbeat_interval=1, grace_period=20))
    try:
        study = optuna.create_study(study_name="outage", storage=storage, direction="maximize")
        trial = study.ask()
        trial.report(0.25, 1)

        postgres_server.stop()
        storage.record_heartbeat(trial._trial_id)  # server down: logged, not raised
        with pytest.raises(Exception) as caught:
            trial.report(0.5, 2)
        error = as_database_error(caught.value)
        assert error is not None and error.transient, caught.value
        back = threading.Timer(3.0, postgres_server.start)
        back.start()
        try:
            down_at = time.monotonic()
            with caplog.at_level(logging.WARNING):
                until_the_database_answers(lambda: study.tell(trial, 0.5), pg_url)
            waited = time.monotonic() - down_at
        finally:
            back.join()
        assert waited > 2.0 and "database back after" in caplog.text
        assert "heartbeat of trial id" in caplog.text
        storage.record_heartbeat(study.ask()._trial_id)
        trials = study.get_trials(deepcopy=False)
        assert trials[0].state == optuna.trial.TrialState.COMPLETE
        assert trials[0].intermediate_values == {1: 0.25}
        started = time.monotonic()
        with pytest.raises(KeyError):  # not a connection problem: not waited for
            until_the_database_answers(lambda: storage.get_trial(10**9), pg_url)
        assert time.monotonic() - started < 1
    finally:
        if not postgres_server.running:
            postgres_server.start()
        storage.remove_session()
        storage.engine.dispose()
