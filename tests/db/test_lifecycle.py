"""Our rows stay tied to Optuna's by id, whatever Optuna's own tools do to a study, and the
study lifecycle commands (delete, rename, copy, notes, tags) change both halves together."""

from __future__ import annotations

import re
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import optuna
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from hpsearch.db.engine import make_engine
from hpsearch.db.lifecycle import COPIED_RUNNING
from hpsearch.db.migrate import downgrade, upgrade
from hpsearch.db.models import Evaluation, Study, Trial
from hpsearch.db.optuna_link import BrokenLink
from hpsearch.db.recorder import Recorder
from tests.db_rows import OPTUNA_TABLES, OUR_TABLES, add_ensemble, row_counts, study_rows
from tests.helpers import hps, one_error_line, run_in_process
from tests.recorded_study import build_recorded_study
from tests.study_files import write_tiny_study


def execute(url: str, sql: str, **params: Any) -> None:
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text(sql), params)
    finally:
        engine.dispose()



@pytest.fixture
def tiny(sqlite_url: str, tmp_path: Path) -> Path:
    """A one-trial synthetic study, run for real: both halves written by the runner."""
    path = write_tiny_study(tmp_path, n_trials=1, epochs=1)
    run_in_process(path, sqlite_url)
    return path


def test_a_study_deleted_in_optuna_is_one_line_everywhere(
        sqlite_url: str, tiny: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    optuna.delete_study(study_name="tiny", storage=sqlite_url)
    before = row_counts(sqlite_url)
    for args in (("show", "tiny", "0"), ("best", "tiny"), ("trials", "tiny"),
                 ("worker", "tiny"), ("run", str(tiny))):
        code, _out, err = hps(capsys, monkeypatch, *args, "--db", sqlite_url)
        assert code == 2, args
        line = one_error_line(err)
        assert "study 'tiny' was deleted in Optuna" in line, line
        assert "hpsearch study delete 'tiny' --yes" in line
    # `run` refused before creating a new Optuna study for the old rows
    assert row_counts(sqlite_url) == before

    code, out, _ = hps(capsys, monkeypatch, "studies", "--db", sqlite_url)
    assert code == 0 and "MISSING" in out and "was deleted in Optuna" in out
    code, out, _ = hps(capsys, monkeypatch, "db", "check", "--db", sqlite_url)
    assert code == 1 and "1 orphan(s)" in out and "was deleted in Optuna" in out

    code, out, _ = hps(capsys, monkeypatch, "study", "delete", "tiny", "--yes",
                       "--db", sqlite_url)
    assert code == 0, out
    assert all(n == 0 for n in row_counts(sqlite_url).values())
    code, out, _ = hps(capsys, monkeypatch, "db", "check", "--db", sqlite_url)
    assert code == 0 and "every study and trial" in out


def test_a_study_recreated_in_optuna_never_gets_the_old_rows(
        sqlite_url: str, tiny: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    (deleted,) = optuna.load_study(study_name="tiny", storage=sqlite_url).trials
    optuna.delete_study(study_name="tiny", storage=sqlite_url)
    recreated = optuna.create_study(study_name="tiny", storage=sqlite_url)
    # a plain Optuna user's trial, even with the same parameters as the deleted one
    recreated.add_trial(optuna.trial.create_trial(value=0.5, params=deleted.params,
                                                  distributions=deleted.distributions))
    # SQLite hands the deleted study's id to the new one, and the deleted trial's id to the new
    # trial: neither ids nor trial numbers nor parameter names tell them apart, only our marker
    with Session(make_engine(sqlite_url)) as session:
        old_trial = session.scalars(select(Trial)).one()
        assert session.scalar(select(Study.optuna_study_id)) == recreated._study_id
    assert recreated.trials[0]._trial_id == old_trial.optuna_trial_id
    new_id = recreated._study_id
    before = row_counts(sqlite_url)
    code, _out, err = hps(capsys, monkeypatch, "run", str(tiny), "--db", sqlite_url)
    assert code == 2
    line = one_error_line(err)
    assert "was deleted and re-created in Optuna" in line, line
    assert row_counts(sqlite_url) == before  # no trial in either half, old or new

    # below the commands, the recorder refuses too: the study row, and a trial row whose
    # number is taken by another Optuna trial
    recorder = Recorder(make_engine(sqlite_url))
    with pytest.raises(BrokenLink, match="re-created"):
        recorder.ensure_study("tiny", new_id, {}, {"n_trials": 1}, "synthetic")
    with Session(make_engine(sqlite_url)) as session:
        old = session.scalars(select(Trial)).one()
    with pytest.raises(BrokenLink, match="belongs to Optuna trial id"):
        recorder.start_trial(old.study_id, old.number, old.optuna_trial_id + 100, {}, [],
                             "w:1", None, seed=0)
    assert row_counts(sqlite_url) == before

    # dropping our old rows leaves Optuna's new study, which the next run then adopts
    code, _, _ = hps(capsys, monkeypatch, "study", "delete", "tiny", "--yes", "--db", sqlite_url)
    assert code == 0
    assert row_counts(sqlite_url)["studies"] == 1
    assert row_counts(sqlite_url)["hps_study"] == 0


def test_a_rename_in_optuna_is_followed_by_study_rename(
        sqlite_url: str, tiny: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # a rename in place (by SQL or another tool); optuna-dashboard's rename, a copy, is
    # tested against the real dashboard in test_dashboard_rename.py
    execute(sqlite_url, "UPDATE studies SET study_name = 'tiny-v2' WHERE study_name = 'tiny'")
    before = row_counts(sqlite_url)
    code, _out, err = hps(capsys, monkeypatch, "run", str(tiny), "--db", sqlite_url)
    assert code == 2
    assert "renamed to 'tiny-v2' in Optuna" in one_error_line(err)
    assert row_counts(sqlite_url) == before

    code, out, _ = hps(capsys, monkeypatch, "study", "rename", "tiny", "tiny-v2",
                       "--db", sqlite_url)
    assert code == 0 and "following Optuna" in out
    code, out, _ = hps(capsys, monkeypatch, "show", "tiny-v2", "0", "--db", sqlite_url)
    assert code == 0, out
    code, out, _ = hps(capsys, monkeypatch, "db", "check", "--db", sqlite_url)
    assert code == 0, out


def test_delete_and_rename_change_both_halves(
        db_url: str, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    build_recorded_study(db_url, "keep")
    build_recorded_study(db_url, "old")
    engine = make_engine(db_url)
    with Session(engine) as session, session.begin():
        for study in session.scalars(select(Study)):
            session.add(add_ensemble(study.id, 0))
    engine.dispose()
    keep = row_counts(db_url)

    code, out, _ = hps(capsys, monkeypatch, "study", "rename", "old", "bad/name",
                       "--db", db_url)
    assert code == 2
    code, out, err = hps(capsys, monkeypatch, "study", "rename", "old", "keep", "--db", db_url)
    assert code == 2 and "already exists" in one_error_line(err)
    code, out, _ = hps(capsys, monkeypatch, "study", "rename", "old", "new", "--db", db_url)
    assert code == 0, out
    assert optuna.study.get_all_study_names(db_url) == ["keep", "new"]
    engine = make_engine(db_url)
    with Session(engine) as session:
        assert sorted(session.scalars(select(Study.name))) == ["keep", "new"]
    engine.dispose()
    assert row_counts(db_url) == keep

    # stdin is no terminal under pytest: no silent delete without --yes
    code, _out, err = hps(capsys, monkeypatch, "study", "delete", "new", "--db", db_url)
    assert code == 2 and "pass --yes" in one_error_line(err)
    code, out, _ = hps(capsys, monkeypatch, "study", "delete", "new", "--yes", "--db", db_url)
    assert code == 0, out
    assert optuna.study.get_all_study_names(db_url) == ["keep"]
    after = row_counts(db_url)
    # exactly one study's rows are gone, on both sides; the other study is untouched
    assert all(after[t] * 2 == keep[t] for t in OPTUNA_TABLES + OUR_TABLES
               if t not in ("trial_heartbeats", "hps_evaluation")), (keep, after)
    code, out, _ = hps(capsys, monkeypatch, "db", "check", "--db", db_url)
    assert code == 0, out


def _running_trial(url: str, name: str) -> int:
    """A RUNNING trial with a fresh heartbeat, in both halves, as a live worker's is; its
    number."""
    with pytest.warns(optuna.exceptions.ExperimentalWarning):
        storage = optuna.storages.RDBStorage(url, heartbeat_interval=1, grace_period=10)
    study_id = storage.get_study_id_from_name(name)
    trial_id = storage.create_new_trial(study_id)
    storage.record_heartbeat(trial_id)
    number = storage.get_trial_number_from_id(trial_id)
    storage.remove_session()
    engine = make_engine(url)
    with Session(engine) as session, session.begin():
        ours = session.scalars(select(Study).where(Study.name == name)).one()
        session.add(Trial(study_id=ours.id, number=number, optuna_trial_id=trial_id,
                          state="running", params={}, seed=number, worker="elsewhere:1"))
    engine.dispose()
    return number


def _age_heartbeats(url: str) -> None:
    """The worker died long ago: its last heartbeat is older than the grace period (120 s)."""
    old = (datetime.now(UTC) - timedelta(minutes=5)).replace(tzinfo=None)
    execute(url, "UPDATE trial_heartbeats SET heartbeat = :old", old=old)


def test_lifecycle_commands_are_refused_while_a_worker_runs(
        sqlite_url: str, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Delete, rename, copy and `db downgrade` of a study with live heartbeats are refused
    alike (copy and downgrade were not: the copy held a RUNNING trial no worker would ever
    end); a tag or note on the running trial itself too, on its finished ones not."""
    build_recorded_study(sqlite_url, "busy")
    number = _running_trial(sqlite_url, "busy")
    before = row_counts(sqlite_url)
    for args, says in [(("study", "delete", "busy", "--yes"), "its workers are still running"),
                       (("study", "rename", "busy", "calm"), "its workers are still running"),
                       (("study", "copy", "busy", "twin"), "its workers are still running"),
                       (("db", "downgrade", "-1", "--yes"),
                        "cannot change the schema while workers run (study 'busy'"),
                       (("tag", "busy", str(number), "x"), f"trial {number} of study 'busy' "
                        "is running")]:
        code, _out, err = hps(capsys, monkeypatch, *args, "--db", sqlite_url)
        assert code == 2, err
        assert says in one_error_line(err), err
    assert row_counts(sqlite_url) == before
    code, _out, err = hps(capsys, monkeypatch, "tag", "busy", "0", "x", "--db", sqlite_url)
    assert code == 0, err
    _age_heartbeats(sqlite_url)
    code, out, _ = hps(capsys, monkeypatch, "study", "delete", "busy", "--yes",
                       "--db", sqlite_url)
    assert code == 0, out


def test_a_trial_left_running_by_a_dead_worker_is_copied_as_failed(
        sqlite_url: str, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    build_recorded_study(sqlite_url, "src")
    number = _running_trial(sqlite_url, "src")
    _age_heartbeats(sqlite_url)
    code, out, err = hps(capsys, monkeypatch, "study", "copy", "src", "dst", "--db", sqlite_url)
    assert code == 0, err
    assert re.search(rf"trials [0-9, ]*\b{number} left running by a dead worker, copied as "
                     "failed", out), out
    copied = optuna.load_study(study_name="dst", storage=sqlite_url).get_trials()
    assert optuna.trial.TrialState.RUNNING not in {t.state for t in copied}
    assert copied[number].state == optuna.trial.TrialState.FAIL
    rows = {t.number: t for t in Session(make_engine(sqlite_url)).scalars(
        select(Trial).join(Study).where(Study.name == "dst"))}
    assert rows[number].state == "failed" and "copied" in (rows[number].reason or "")


def test_a_killed_copy_is_repeated_by_the_same_command(
        db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed between Optuna's half and ours (as a kill -9 after optuna.copy_study): the
    same command removes the leftover and copies again, and says so; before, it said 'already
    exists' for ever."""
    build_recorded_study(db_url, "src")
    target = f"sqlite:///{tmp_path / 'copy.db'}"
    upgrade(target)
    optuna.copy_study(from_study_name="src", from_storage=db_url, to_storage=target,
                      to_study_name="dst")  # the Optuna half only
    code, out, err = hps(capsys, monkeypatch, "study", "copy", "src", "dst", "--to-db", target,
                         "--db", db_url)
    assert code == 0, err
    assert "the remains of an interrupted copy were removed first" in out
    assert study_rows(target, "dst") == _as_copied(study_rows(db_url, "src"))
    code, out, _ = hps(capsys, monkeypatch, "db", "check", "--db", target)
    assert code == 0, out
    # someone else's study of that name is never taken for a leftover
    optuna.create_study(study_name="theirs", storage=target).optimize(lambda t: 1.0, n_trials=1)
    code, _out, err = hps(capsys, monkeypatch, "study", "copy", "src", "theirs", "--to-db",
                          target, "--db", db_url)
    assert code == 2 and "already exists" in one_error_line(err)


def test_a_study_made_by_optuna_is_not_adopted_by_run(
        sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`optuna.copy_study` into our database, then `hpsearch run` of that name: its trials
    counted towards n_trials in Optuna, invisible to every hpsearch view ('finished 1/4')."""
    build_recorded_study(sqlite_url, "src")
    optuna.copy_study(from_study_name="src", from_storage=sqlite_url, to_storage=sqlite_url,
                      to_study_name="tiny")
    before = row_counts(sqlite_url)
    path = write_tiny_study(tmp_path, "tiny", n_trials=1, epochs=1)
    code, _out, err = hps(capsys, monkeypatch, "run", str(path), "--db", sqlite_url)
    assert code != 0
    assert ("study 'tiny' exists in Optuna's tables with 8 trial(s) but was not made by "
            "hpsearch") in one_error_line(err)
    assert row_counts(sqlite_url) == before


def _as_copied(rows: dict[str, list[tuple[Any, ...]]]) -> dict[str, list[tuple[Any, ...]]]:
    """A study's rows as its copy has them: a trial left running (the recorded study's last,
    whose worker is long gone) is failed in the copy."""
    columns = [c.key for c in Trial.__table__.columns
               if c.key not in {"id", "study_id", "trial_id", "optuna_trial_id"}]
    state, reason = columns.index("state"), columns.index("reason")

    def copied(trial: tuple[Any, ...]) -> tuple[Any, ...]:
        if trial[state] != "running":
            return trial
        out = list(trial)
        out[state], out[reason] = "failed", COPIED_RUNNING
        return tuple(out)
    return {**rows, "trial": [copied(t) for t in rows["trial"]]}


def test_copy_to_a_second_database_round_trips_every_row(
        db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    recorded = build_recorded_study(db_url, "src")
    engine = make_engine(db_url)
    with Session(engine) as session, session.begin():
        best = session.scalars(select(Trial).where(Trial.number == recorded.best_number)).one()
        for seed in (0, 1):
            session.add(Evaluation(trial_id=best.id, seed=seed, epochs=3, test_acc=0.8 + seed,
                                   test_loss=0.5, curve=[{"epoch": 1, "train_loss": 1.0}],
                                   checkpoint_path="final.pt", seconds=2.0))
        best.tags, best.note = ["keeper"], "the one"
        session.add(add_ensemble(best.study_id, recorded.best_number))
    engine.dispose()
    target = f"sqlite:///{tmp_path / 'copy.db'}"
    code, out, _ = hps(capsys, monkeypatch, "study", "copy", "src", "dst", "--to-db", target,
                       "--db", db_url)
    assert code == 0 and "8 trials" in out, out
    source, copied = study_rows(db_url, "src"), study_rows(target, "dst")
    assert len(copied["epoch"]) == 21 and len(copied["evaluation"]) == 2
    assert len(copied["ensemble"]) == 1
    assert copied == _as_copied(source)
    # a real Optuna study, and each of our rows tied to the copy's own trial
    theirs = optuna.load_study(study_name="dst", storage=target).get_trials(deepcopy=False)
    ours = Session(make_engine(target)).scalars(select(Trial).order_by(Trial.number)).all()
    assert [t._trial_id for t in theirs] == [t.optuna_trial_id for t in ours]
    assert [t.intermediate_values for t in theirs] == [
        t.intermediate_values
        for t in optuna.load_study(study_name="src", storage=db_url).get_trials()]
    code, out, _ = hps(capsys, monkeypatch, "db", "check", "--db", target)
    assert code == 0, out
    code, _out, err = hps(capsys, monkeypatch, "study", "copy", "src", "dst", "--to-db", target,
                          "--db", db_url)
    assert code == 2 and "already exists" in one_error_line(err)
    # within one database: the copy is a study of its own, tied to its own Optuna study
    code, out, _ = hps(capsys, monkeypatch, "study", "copy", "src", "twin", "--db", db_url)
    assert code == 0, out
    assert study_rows(db_url, "twin") == _as_copied(source)
    code, out, _ = hps(capsys, monkeypatch, "db", "check", "--db", db_url)
    assert code == 0, out


def test_notes_and_tags_are_stored_and_shown(
        sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    build_recorded_study(sqlite_url, "demo")
    db = ("--db", sqlite_url)
    code, out, _ = hps(capsys, monkeypatch, "study", "note", "demo", "baseline run", *db)
    assert code == 0 and out == "study 'demo': note set to 'baseline run'\n", out
    code, out, _ = hps(capsys, monkeypatch, "tag", "demo", "2", "good", "fast", *db)
    assert code == 0 and "tags [good, fast]" in out
    code, out, _ = hps(capsys, monkeypatch, "tag", "demo", "2", "fast", "--remove",
                       "--note", "retrain this", *db)
    assert code == 0 and "tags [good], note: retrain this" in out, out
    code, out, _ = hps(capsys, monkeypatch, "studies", *db)
    assert "baseline run" in out
    code, out, _ = hps(capsys, monkeypatch, "show", "demo", "2", "--format", "json", *db)
    assert '"tags": [\n      "good"\n    ]' in out and '"note": "retrain this"' in out, out
    report = tmp_path / "report.html"
    code, out, _ = hps(capsys, monkeypatch, "report", "demo", "--output", str(report), *db)
    assert code == 0, out
    assert "Note: baseline run" in report.read_text()
    code, _out, err = hps(capsys, monkeypatch, "tag", "demo", "99", "x", *db)
    assert code == 2 and "has no trial 99" in one_error_line(err)


def test_db_check_lists_orphans_on_either_side(
        sqlite_url: str, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    build_recorded_study(sqlite_url, "demo")
    optuna.create_study(study_name="plain", storage=sqlite_url)  # Optuna's, not ours
    # a trial of ours whose Optuna trial is gone (deleted children first, as Optuna does)
    engine = make_engine(sqlite_url)
    with engine.begin() as conn:
        gone = conn.execute(select(func.min(Trial.optuna_trial_id))).scalar_one()
        for table in ("trial_params", "trial_values", "trial_intermediate_values",
                      "trial_user_attributes", "trial_system_attributes"):
            conn.execute(text(f"DELETE FROM {table} WHERE trial_id = :t"), {"t": gone})
        conn.execute(text("DELETE FROM trials WHERE trial_id = :t"), {"t": gone})
    engine.dispose()
    code, out, _ = hps(capsys, monkeypatch, "db", "check", "--db", sqlite_url)
    assert code == 1
    assert "2 orphan(s)" in out
    assert "Optuna study 'plain'" in out and "has no hpsearch rows" in out
    assert "study 'demo': 1 trial row(s) whose Optuna trial is gone" in out


def test_migration_0004_marks_the_optuna_studies_of_older_rows(
        sqlite_url: str, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    build_recorded_study(sqlite_url, "kept")
    build_recorded_study(sqlite_url, "gone")
    downgrade(sqlite_url, "0003")  # as a database of the previous release: no markers
    assert row_counts(sqlite_url)["hps_trial"] == 16
    # re-created in Optuna while the older release was in use
    optuna.delete_study(study_name="gone", storage=sqlite_url)
    optuna.create_study(study_name="gone", storage=sqlite_url)
    upgrade(sqlite_url)
    code, out, _ = hps(capsys, monkeypatch, "best", "kept", "--db", sqlite_url)
    assert code == 0, out
    code, _out, err = hps(capsys, monkeypatch, "best", "gone", "--db", sqlite_url)
    assert code == 2 and "re-created in Optuna" in one_error_line(err)


@pytest.mark.parametrize("command", [["study", "note", "demo", "hello"],
                                     ["tag", "demo", "0", "keep"],
                                     ["study", "rename", "demo", "demo2"]])
def test_lifecycle_writes_go_through_the_session_scope(
        command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The write transaction of delete/rename/copy/note/tag is the session module's: it takes
    SQLite's write lock first (BEGIN IMMEDIATE), so another client's lock makes it wait out
    the busy timeout, and then fail as one classified line, not an unforeseen error."""
    db = tmp_path / "locked.db"
    build_recorded_study(f"sqlite:///{db}", "demo")
    locker = sqlite3.connect(db, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")  # another client writing
    try:
        code, out, err = hps(capsys, monkeypatch, *command, "--db", f"sqlite:///{db}?timeout=0.3")
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    (line,) = err.strip().splitlines()
    assert code != 0 and out == ""
    assert line == f"hpsearch: error: cannot use database sqlite:///{db}?timeout=0.3: " \
        "database is locked", line


def test_one_way_to_open_a_transaction() -> None:
    """Sessions, connection scopes and SQLite's write transactions are opened in
    hpsearch/db/session.py only."""
    root = Path(__file__).resolve().parents[2] / "hpsearch"
    others = [str(p.relative_to(root)) for p in root.rglob("*.py") if p.name != "session.py"
              and any(s in p.read_text() for s in (".begin()", "BEGIN IMMEDIATE", "Session("))]
    assert others == []
