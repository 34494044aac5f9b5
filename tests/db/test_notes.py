"""One set of notes: hpsearch writes a study's and a trial's note where optuna-dashboard keeps
its own, and reads the dashboard's back, through the dashboard's real Python API; a note stored
before (our rows' note column) still shows."""

from __future__ import annotations

import json

import optuna
import pytest
from optuna_dashboard import get_note, save_note
from sqlalchemy import update

from hpsearch.db.engine import make_engine
from hpsearch.db.models import Study, Trial
from tests.helpers import hps
from tests.recorded_study import build_recorded_study


def shown_note(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
               url: str, study: str, number: int) -> str | None:
    code, out, err = hps(capsys, monkeypatch, "show", study, str(number), "-f", "json",
                         "--db", url)
    assert code == 0, err
    return json.loads(out)["trial"]["note"]


def trial_of(study: optuna.Study, number: int) -> optuna.Trial:
    return optuna.Trial(study, study.get_trials(deepcopy=False)[number]._trial_id)


def test_notes_are_the_dashboards_both_ways(sqlite_url: str,
                                            capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    build_recorded_study(sqlite_url, "demo")
    db = ("--db", sqlite_url)
    study = optuna.load_study(study_name="demo", storage=sqlite_url)
    # ours, shown by the dashboard
    assert hps(capsys, monkeypatch, "study", "note", "demo", "baseline run", *db)[0] == 0
    assert hps(capsys, monkeypatch, "tag", "demo", "2", "good", "--note", "retrain this",
               *db)[0] == 0
    assert get_note(study) == "baseline run"
    assert get_note(trial_of(study, 2)) == "retrain this"
    # the dashboard's (Markdown, several lines, longer than one of its 2045-character chunks),
    # shown by ours; tagging without --note keeps it
    long = "## From the dashboard\n\n" + "x" * 5000
    save_note(study, "**edited** in the dashboard")
    save_note(trial_of(study, 2), long)
    assert hps(capsys, monkeypatch, "tag", "demo", "2", "kept", *db)[0] == 0
    assert shown_note(capsys, monkeypatch, sqlite_url, "demo", 2) == long
    code, out, _ = hps(capsys, monkeypatch, "studies", "-f", "json", *db)
    assert json.loads(out)[0]["note"] == "**edited** in the dashboard"
    # a shorter note of ours replaces every chunk of the longer one; "" clears it
    assert hps(capsys, monkeypatch, "tag", "demo", "2", "--note", "short", *db)[0] == 0
    assert get_note(trial_of(study, 2)) == "short"
    assert shown_note(capsys, monkeypatch, sqlite_url, "demo", 2) == "short"
    assert hps(capsys, monkeypatch, "tag", "demo", "2", "--note", "", *db)[0] == 0
    assert get_note(trial_of(study, 2)) == ""
    assert shown_note(capsys, monkeypatch, sqlite_url, "demo", 2) is None
    # a copy keeps each trial's note on its own trial
    save_note(trial_of(study, 3), "copied along")
    assert hps(capsys, monkeypatch, "study", "copy", "demo", "twin", *db)[0] == 0
    assert shown_note(capsys, monkeypatch, sqlite_url, "twin", 3) == "copied along"
    twin = optuna.load_study(study_name="twin", storage=sqlite_url)
    assert get_note(trial_of(twin, 3)) == "copied along"


def test_a_note_stored_before_still_shows(sqlite_url: str,
                                          capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    build_recorded_study(sqlite_url, "demo")
    engine = make_engine(sqlite_url)
    with engine.begin() as conn:  # as the previous release stored them
        conn.execute(update(Study).values(note="old study note"))
        conn.execute(update(Trial).where(Trial.number == 1).values(note="old trial note"))
    engine.dispose()
    assert shown_note(capsys, monkeypatch, sqlite_url, "demo", 1) == "old trial note"
    code, out, _ = hps(capsys, monkeypatch, "studies", "-f", "json", "--db", sqlite_url)
    assert json.loads(out)[0]["note"] == "old study note"
    # tagging leaves it where it is; a new note replaces it, in the dashboard's place
    assert hps(capsys, monkeypatch, "tag", "demo", "1", "x", "--db", sqlite_url)[0] == 0
    assert shown_note(capsys, monkeypatch, sqlite_url, "demo", 1) == "old trial note"
    assert hps(capsys, monkeypatch, "tag", "demo", "1", "--note", "new", "--db",
               sqlite_url)[0] == 0
    assert shown_note(capsys, monkeypatch, sqlite_url, "demo", 1) == "new"
