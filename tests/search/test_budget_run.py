"""An hours budget at work: workers keep the published limits (search/hours.py)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from hpsearch.search.hours import publish_limits
from hpsearch.search.study import open_storage, prepare_study
from hpsearch.search.study_file import load_study
from hpsearch.search.worker import run_worker
from tests.helpers import hps, stored_trials
from tests.study_files import write_tiny_study


def run_with_limits(tmp_path: Path, start_by: float, search_end: float) -> str:
    url = f"sqlite:///{tmp_path / 'h.db'}"
    config = load_study(write_tiny_study(tmp_path, n_trials=2, epochs=3))
    prepare_study(config, url, None)
    storage = open_storage(url, config.workers)
    publish_limits(storage, storage.get_study_id_from_name(config.name),
                   {"start_by": start_by, "search_end": search_end})
    storage.engine.dispose()
    run_worker(config.name, url, threads=1)
    return url


def test_a_worker_starts_no_trial_after_start_by(tmp_path: Path) -> None:
    url = run_with_limits(tmp_path, start_by=time.time() - 1, search_end=time.time() + 3600)
    assert stored_trials(url, "tiny") == []


def test_a_trial_running_at_the_search_end_stops_after_its_epoch(tmp_path: Path) -> None:
    # trials may start, but the search time is over: each stops after its first epoch
    url = run_with_limits(tmp_path, start_by=time.time() + 3600, search_end=time.time() - 1)
    trials = stored_trials(url, "tiny")
    assert [(t.state, t.epochs_run) for t in trials] == [("pruned", 1), ("pruned", 1)]
    assert all(t.reason == "stopped at epoch 1: the search time of the hours budget is over"
               for t in trials)


def test_a_run_without_a_budget_clears_limits_left_behind(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # a launcher killed outright left limits that would keep every worker from starting
    url = run_with_limits(tmp_path, start_by=time.time() - 1, search_end=time.time() - 1)
    code, _, err = hps(capsys, monkeypatch, "run", str(tmp_path / "tiny.toml"), "--db", url,
                       "--threads", "1", "--top", "0")
    assert code == 0, err
    assert [t.state for t in stored_trials(url, "tiny")] == ["complete", "complete"]


@pytest.mark.parametrize(("hours", "message"), [
    ("0", "--hours: hours must be positive, got 0.0"),
    ("-2", "--hours: hours must be positive, got -2.0"),
    ("nan", "must be a finite number"),
    ("1e9", "--hours: hours must be at most 10,000.0"),
])
def test_a_bad_hours_option_is_one_line_before_anything_is_written(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        hours: str, message: str) -> None:
    path = write_tiny_study(tmp_path)
    code, out, err = hps(capsys, monkeypatch, "run", str(path), "--db",
                         f"sqlite:///{tmp_path / 'h.db'}", "--hours", hours)
    assert code == 2 and out == "" and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "h.db").exists()


def test_an_hours_budget_too_short_for_any_trial_is_an_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A budget over before one trial completes leaves no final model: the run said so in a
    yellow line and exited 0, as if it had delivered."""
    path = write_tiny_study(tmp_path)
    code, _, err = hps(capsys, monkeypatch, "run", str(path), "--db",
                       f"sqlite:///{tmp_path / 'h.db'}", "--hours", "0.00001", "--top", "0",
                       "--threads", "1")
    assert code == 2
    assert err.strip() == ("hpsearch: error: no trial completed within the hours budget, so "
                           "there is no final model to retrain")
