"""PostgreSQL restarted in the middle of a study: `hpsearch run` with two workers rides it out.

The server is stopped (clients disconnected) while trials are training, stays down for a few
seconds and comes back on the same port. The launcher's live view, the workers' epoch writes,
Optuna's reports and the heartbeat threads all wait for it; nothing is lost, nothing is written
twice, and no trial fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from hpsearch.db.engine import make_engine
from hpsearch.db.models import Epoch, Study, Trial
from hpsearch.search.study import open_storage
from hpsearch.search.study_file import WorkerOptions
from tests.conftest import PostgresServer
from tests.helpers import wait_for
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
        running_before = set(heartbeat_ages(pg_url))

        postgres_server.restart(down_s=DOWN_S)  # fast shutdown: every connection is cut
        restarted_at = time.monotonic()

        # the heartbeat threads of the trials that trained through the outage beat again (a
        # dead one would leave its trial to be failed as stale by the other worker)
        # (a live thread beats within one interval of the server's return; a dead one's last
        # beat is older than the outage)
        time.sleep(HEARTBEAT[0] + 0.5)
        ages = {t: age for t, age in heartbeat_ages(pg_url).items() if t in running_before}
        assert ages, "the trials finished before their heartbeats could be checked"
        assert all(age < HEARTBEAT[0] + 2 < DOWN_S for age in ages.values()), \
            f"heartbeats stopped at the restart: {ages}"
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

    engine = make_engine(pg_url)
    with Session(engine) as session:
        study_id = session.scalar(select(Study.id).where(Study.name == "restart"))
        trials = list(session.scalars(select(Trial).where(Trial.study_id == study_id)))
        counts = session.execute(select(Epoch.trial_id, Epoch.epoch, func.count())
                                 .group_by(Epoch.trial_id, Epoch.epoch)).all()
    engine.dispose()

    # exactly n_trials finished, none failed, none left running
    assert sorted(t.state for t in trials) == ["complete"] * N_TRIALS, \
        [(t.number, t.state, t.reason) for t in trials]
    # every finished trial has every epoch, each exactly once
    assert all(count == 1 for _, _, count in counts)
    stored: dict[int, list[int]] = {}
    for trial_id, epoch, _ in counts:
        stored.setdefault(trial_id, []).append(epoch)
    for trial in trials:
        assert sorted(stored[trial.id]) == list(range(1, EPOCHS + 1)), trial.number
        assert trial.epochs_run == EPOCHS
    # rows written before the restart are intact
    after_epochs = epoch_rows(pg_url)
    for key, row in before_epochs.items():
        assert after_epochs[key] == row
    after_trials = finished_trial_rows(pg_url)
    for key, row in before_trials.items():
        assert after_trials[key] == row
    # and Optuna agrees
    ostudy = optuna.load_study(study_name="restart", storage=pg_url)
    states = [t.state for t in ostudy.get_trials(deepcopy=False)]
    assert states.count(optuna.trial.TrialState.COMPLETE) == N_TRIALS
    assert optuna.trial.TrialState.RUNNING not in states
    assert optuna.trial.TrialState.FAIL not in states, states
    for frozen in ostudy.get_trials(deepcopy=False):
        assert sorted(frozen.intermediate_values) == list(range(1, EPOCHS + 1))


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")
def test_optuna_storage_calls_wait_out_a_restart(pg_url: str,
                                                 postgres_server: PostgresServer) -> None:
    """The storage the workers use: calls made while the server is down wait for it, a
    heartbeat that cannot be written is skipped instead of ending the heartbeat thread, and
    real errors still fail at once."""
    storage = open_storage(pg_url, WorkerOptions(heartbeat_interval=1, grace_period=20))
    try:
        study = optuna.create_study(study_name="outage", storage=storage, direction="maximize")
        trial = study.ask()
        trial.report(0.25, 1)

        postgres_server.stop()
        storage.record_heartbeat(trial._trial_id)  # server down: logged, not raised
        back = threading.Timer(3.0, postgres_server.start)
        back.start()
        try:
            down_at = time.monotonic()
            trial.report(0.5, 2)  # waits for the server
            waited = time.monotonic() - down_at
            study.tell(trial, 0.5)
            second = study.ask()  # a new trial row, through a fresh connection
            study.tell(second, 0.75)
        finally:
            back.join()
        assert waited > 2.0
        storage.record_heartbeat(second._trial_id)
        trials = study.get_trials(deepcopy=False)
        assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
        assert trials[0].intermediate_values == {1: 0.25, 2: 0.5}
        with pytest.raises(KeyError):  # not a connection problem: no retrying
            storage.get_trial(10**9)
    finally:
        if not postgres_server.running:
            postgres_server.start()
        storage.remove_session()
        storage.engine.dispose()
