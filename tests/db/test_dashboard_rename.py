"""A rename made in the real optuna-dashboard (its HTTP API, its own server) is followed: the
dashboard copies the study into a new Optuna study (new ids, system attributes dropped) and
deletes the old one; our rows are recognised by their trials, re-linked by `hpsearch study
rename`, and nothing is advised or allowed that would delete the results in between."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import optuna
import pytest
from optuna.exceptions import ExperimentalWarning
from sqlalchemy import select
from sqlalchemy.orm import Session

from hpsearch.db.engine import make_engine
from hpsearch.db.models import Evaluation, Study, Trial
from hpsearch.search.study import open_storage
from hpsearch.spec import WorkerOptions
from tests.conftest import free_port
from tests.db_rows import add_ensemble, row_counts, study_rows
from tests.helpers import finish, hps, one_error_line, stored_trials, wait_for
from tests.recorded_study import build_recorded_study, distributions
from tests.study_files import write_tiny_study

pytest.importorskip("optuna_dashboard", reason="OPTUNA-DASHBOARD IS MISSING: the rename in "
                    "optuna-dashboard was NOT tested (pip install 'hpsearch[dashboard]')")


def call(url: str, payload: dict | None = None) -> dict:
    request = urllib.request.Request(
        url, method="GET" if payload is None else "POST",
        data=None if payload is None else json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:  # a loaded machine is slow
        return json.load(response)


@contextmanager
def dashboard(sqlite_url: str, log_dir: Path) -> Iterator[str]:
    """optuna-dashboard on the database, as `hpsearch dashboard` serves it; its base URL."""
    port = free_port()
    log = log_dir / "dashboard.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "hpsearch", "dashboard", "--db", sqlite_url,
             "--port", str(port)], stdout=out, stderr=subprocess.STDOUT,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: call(f"{base}/api/studies") is not None, 60, "the dashboard")
        yield base
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=60)
        finally:
            server.kill()
            print("dashboard output:", log.read_text())


def rename_in_dashboard(base: str, old: str, new: str) -> None:
    (study_id,) = [s["study_id"] for s in call(f"{base}/api/studies")["study_summaries"]
                   if s["study_name"] == old]
    assert call(f"{base}/api/studies/{study_id}/rename", {"study_name": new})["study_name"] == new


def test_a_rename_in_optuna_dashboard_is_followed(
        sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    recorded = build_recorded_study(sqlite_url, "demo")
    db = ("--db", sqlite_url)
    engine = make_engine(sqlite_url)
    with Session(engine) as session, session.begin():
        best = session.scalars(select(Trial).where(Trial.number == recorded.best_number)).one()
        session.add(Evaluation(trial_id=best.id, seed=0, epochs=3, test_acc=0.81, test_loss=0.5,
                               curve=[{"epoch": 1, "train_loss": 1.0}],
                               checkpoint_path="final.pt", seconds=2.0))
        session.add(add_ensemble(best.study_id, recorded.best_number))
    engine.dispose()
    assert hps(capsys, monkeypatch, "study", "note", "demo", "baseline run", *db)[0] == 0
    assert hps(capsys, monkeypatch, "tag", "demo", str(recorded.best_number), "keeper",
               "--note", "retrain this", *db)[0] == 0
    before = study_rows(sqlite_url, "demo")

    with dashboard(sqlite_url, tmp_path) as base:
        rename_in_dashboard(base, "demo", "demo-v2")
    assert optuna.study.get_all_study_names(sqlite_url) == ["demo-v2"]
    counts = row_counts(sqlite_url)

    # every command names the rename and how to follow it; none advises a delete
    for args in (("trials", "demo"), ("best", "demo"), ("show", "demo", "0"),
                 ("trials", "demo-v2")):
        code, _out, err = hps(capsys, monkeypatch, *args, *db)
        line = one_error_line(err)
        assert code == 2 and "hpsearch study rename 'demo' 'demo-v2'" in line, line
        assert "delete" not in line
    code, out, _ = hps(capsys, monkeypatch, "db", "check", *db)
    assert code == 1 and "renamed to 'demo-v2'" in out and "delete" not in out, out
    # deleting either half now would take the other's results with it: refused
    for name in ("demo", "demo-v2"):
        code, _out, err = hps(capsys, monkeypatch, "study", "delete", name, "--yes", *db)
        assert code == 2 and "hpsearch study rename 'demo' 'demo-v2'" in one_error_line(err)
    assert row_counts(sqlite_url) == counts

    code, out, _ = hps(capsys, monkeypatch, "study", "rename", "demo", "demo-v2", *db)
    assert code == 0 and "following Optuna" in out, out
    # every row of ours kept (epochs, evaluations, ensembles, notes, tags), each trial tied to
    # the dashboard's copy of its Optuna trial
    assert study_rows(sqlite_url, "demo-v2") == before
    copy = optuna.load_study(study_name="demo-v2", storage=sqlite_url)
    engine = make_engine(sqlite_url)
    with Session(engine) as session:
        assert session.scalar(select(Study.optuna_study_id)) == copy._study_id
        ours = session.scalars(select(Trial).order_by(Trial.number)).all()
    engine.dispose()
    assert [t.optuna_trial_id for t in ours] == [t._trial_id for t in copy.trials]
    assert copy.metric_names == ["val_acc"]  # what the dashboard's copy dropped comes back

    code, out, _ = hps(capsys, monkeypatch, "db", "check", *db)
    assert code == 0, out
    code, out, _ = hps(capsys, monkeypatch, "trials", "demo-v2", "--format", "csv", *db)
    assert code == 0 and len(out.strip().splitlines()) == 1 + recorded.n_trials, out
    code, out, _ = hps(capsys, monkeypatch, "show", "demo-v2", str(recorded.best_number),
                       "--format", "json", *db)
    assert code == 0 and '"note": "retrain this"' in out and "0.81" in out, out
    code, out, _ = hps(capsys, monkeypatch, "best", "demo-v2", *db)
    assert code == 0, out
    report = tmp_path / "report.html"
    code, out, _ = hps(capsys, monkeypatch, "report", "demo-v2", "--output", str(report), *db)
    assert code == 0 and "Note: baseline run" in report.read_text()


def test_a_rename_in_optuna_dashboard_during_a_run_is_one_line_and_its_trials_resume(
        sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The dashboard's copy-and-delete under two running workers: each leaves with the line
    that says how to follow (before: `unexpected UnboundLocalError`, from Optuna's tell of a
    deleted trial); following it hands the trials the copy holds as running, whose workers
    are gone, to the heartbeat check, so they are resumed (before: running for ever)."""
    # trials of 5 minutes: the rename comes while both run. Epochs of 0.5 s, as real ones
    # are seconds long: at 0.1 s (two workers writing 20 epochs a second) the dashboard's
    # rename landed only after both trials had ended, in 3 runs of 6
    n_trials = 2
    # a grace period no loaded machine's heartbeat misses: with 4 s, a heartbeat held up under
    # load got a live trial failed and retried mid-rename (seen with the old study kept)
    path = write_tiny_study(tmp_path, "live", n_trials=n_trials, epochs=600, dry_run=0.5,
                            heartbeat=(1, 30))
    db = ("--db", sqlite_url)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    assert hps(capsys, monkeypatch, "db", "upgrade", *db)[0] == 0  # the dashboard needs it
    with dashboard(sqlite_url, tmp_path) as base:
        run = subprocess.Popen(
            [sys.executable, "-m", "hpsearch", "run", str(path), *db, "--workers", "2",
             "--threads", "1", "--log-dir", str(tmp_path / "logs"), "--top", "0"],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            wait_for(lambda: [t.state for t in stored_trials(sqlite_url, "live")
                              if t.epochs_run >= 1] == ["running"] * n_trials, 120,
                     "both workers training")
            rename_in_dashboard(base, "live", "live-v2")
        finally:
            output = finish(run)
    follow = "study 'live' was renamed to 'live-v2' in Optuna; run `hpsearch study rename " \
             "'live' 'live-v2'` to follow it"
    assert run.returncode != 0 and output.count(follow) == n_trials, output
    assert "unexpected" not in output and "Traceback" not in output, output
    copy = optuna.load_study(study_name="live-v2", storage=sqlite_url)
    assert [t.state.name for t in copy.trials] == ["RUNNING"] * n_trials

    # refused while the copied trials' last sign of life is within the grace period (30 s)
    wait_for(lambda: hps(capsys, monkeypatch, "study", "rename", "live", "live-v2", *db)[0] == 0,
             150, "the rename to be followed")
    # the next worker's heartbeat check (here in-process) fails them and queues their retries
    fail_stale_trials(sqlite_url, "live-v2")
    trials = optuna.load_study(study_name="live-v2", storage=sqlite_url).trials
    assert [t.state.name for t in trials] == ["FAIL"] * n_trials + ["WAITING"] * n_trials
    assert [t.system_attrs["failed_trial"] for t in trials[n_trials:]] == list(range(n_trials))
    assert {t.state for t in stored_trials(sqlite_url, "live-v2")} == {"failed"}


def test_trials_begun_while_the_dashboard_copied_the_study_are_not_orphaned(
        db_url: str, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """optuna-dashboard copies the trials it read, then deletes the study: a trial a worker
    began in between is in our rows but not in the copy. Still a rename, not a deletion (before:
    "was deleted in Optuna; run `hpsearch study delete` to drop its orphaned results"), and
    following it gives the copy that trial, running, for the heartbeat check to resume."""
    recorded = build_recorded_study(db_url, "demo")
    source = optuna.load_study(study_name="demo", storage=db_url)
    taken = source.get_trials(deepcopy=False)  # what the dashboard read and copies
    late = source.ask(distributions())  # a worker's next trial, begun meanwhile
    engine = make_engine(db_url)
    with Session(engine) as session, session.begin():
        study = session.scalars(select(Study)).one()
        session.add(Trial(study_id=study.id, number=late.number, optuna_trial_id=late._trial_id,
                          state="running", params=late.params, sampled=list(late.params),
                          seed=late.number, worker="w:1", epochs_run=0,
                          started_at=datetime.now(UTC) - timedelta(minutes=5)))
    engine.dispose()
    copy = optuna.create_study(storage=db_url, study_name="demo-v2",
                               directions=source.directions)
    copy.add_trials(taken)
    optuna.delete_study(study_name="demo", storage=db_url)

    db = ("--db", db_url)
    code, _out, err = hps(capsys, monkeypatch, "trials", "demo", *db)
    assert code == 2 and "hpsearch study rename 'demo' 'demo-v2'" in one_error_line(err)
    code, out, err = hps(capsys, monkeypatch, "study", "rename", "demo", "demo-v2", *db)
    assert code == 0 and "following Optuna" in out, err
    trials = optuna.load_study(study_name="demo-v2", storage=db_url).trials
    assert len(trials) == recorded.n_trials + 1
    running = {t.number: t for t in trials if t.state == optuna.trial.TrialState.RUNNING}
    assert late.number in running and running[late.number].params == late.params
    fail_stale_trials(db_url, "demo-v2")
    retries = {t.system_attrs["failed_trial"]: t for t in optuna.load_study(
        study_name="demo-v2", storage=db_url).trials
        if t.state == optuna.trial.TrialState.WAITING}
    assert retries.keys() == running.keys()  # the recorded study's dead trial's too
    assert retries[late.number].params == late.params
    code, out, _ = hps(capsys, monkeypatch, "db", "check", *db)
    assert code == 0, out


def fail_stale_trials(url: str, name: str) -> None:
    """A worker's heartbeat check (grace period 4 s), run here in-process."""
    storage = open_storage(url, WorkerOptions(heartbeat_interval=1, grace_period=4))
    try:
        with warnings.catch_warnings(action="ignore", category=ExperimentalWarning):
            optuna.storages.fail_stale_trials(optuna.load_study(study_name=name,
                                                                storage=storage))
    finally:
        storage.remove_session()
