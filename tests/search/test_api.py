"""The documented Python API (hpsearch.api): each function on a tiny synthetic study."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpsearch import api
from hpsearch.errors import ConfigError, HpsearchError
from hpsearch.search.study_file import load_study
from tests.study_files import write_tiny_study


@pytest.fixture
def finished(sqlite_url: str, tmp_path: Path) -> str:
    """`tiny`: three trials of one epoch, created and run through the API."""
    path = write_tiny_study(tmp_path, "tiny", n_trials=3, epochs=1)
    assert api.create_study(path, sqlite_url) == "tiny"
    summary = api.run_worker("tiny", sqlite_url)
    assert summary.complete + summary.pruned == 3
    return sqlite_url


def test_create_study_from_a_dict_trains_nothing(sqlite_url: str, tmp_path: Path) -> None:
    raw = load_study(write_tiny_study(tmp_path, "from-dict")).raw
    assert api.create_study(raw, sqlite_url, trials=7) == "from-dict"
    assert api.trials("from-dict", sqlite_url) == []
    with pytest.raises(ConfigError, match="unknown key"):
        api.create_study({**raw, "study": {**raw["study"], "colour": "red"}}, sqlite_url)


def test_readers_return_plain_records_with_full_parameters(finished: str) -> None:
    trials = api.trials("tiny", finished)
    assert [t.number for t in trials] == [0, 1, 2]
    assert all(t.params["token_mlp_dim"] == 16 for t in trials)  # fixed values included
    best = api.best_trial("tiny", finished)
    assert best is not None and best.state == "complete"
    assert best.value == max(t.value for t in trials if t.state == "complete")
    epochs = api.epochs("tiny", finished)
    assert [(e.trial_number, e.epoch) for e in epochs] == [(0, 1), (1, 1), (2, 1)]


def test_trials_dataframe_has_a_column_per_parameter(finished: str) -> None:
    pytest.importorskip("pandas")
    frame = api.trials_dataframe("tiny", finished)
    assert list(frame["number"]) == [0, 1, 2]
    assert {"value", "state", "params.lr", "params.token_mlp_dim"} <= set(frame.columns)
    assert (frame["params.token_mlp_dim"] == 16).all()


def test_reading_a_missing_database_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "typo.db"
    with pytest.raises(HpsearchError, match="no hpsearch tables"):
        api.trials("tiny", f"sqlite:///{missing}")
    assert not missing.exists()


def test_pareto_front_of_a_multi_objective_study(sqlite_url: str, tmp_path: Path) -> None:
    raw = load_study(write_tiny_study(tmp_path, "both", n_trials=3, epochs=1,
                                      sampler="tpe")).raw
    raw["study"] |= {"objectives": ["val_acc:max", "params:min"]}
    api.create_study(raw, sqlite_url)
    api.run_worker("both", sqlite_url)
    front = api.pareto_front("both", sqlite_url)
    best = api.best_trial("both", sqlite_url)
    assert [o.label for o in front.objectives] == ["val_acc:max", "params:min"]
    assert best is not None and front.chosen == best.number
    assert best.number in [t.number for t in front.trials]
    for trial in front.trials:  # each with its values: best accuracy, parameter count
        assert front.values[trial.number] == (trial.value, trial.n_params)
