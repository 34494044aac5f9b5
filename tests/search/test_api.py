"""The documented Python API (hpsearch.api): each function on a tiny synthetic study."""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
import typer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import inspect

from hpsearch import api
from hpsearch.cli import app
from hpsearch.db.engine import make_engine
from hpsearch.errors import ConfigError, HpsearchError
from hpsearch.params import INT_MAX
from tests.study_files import write_tiny_study


@pytest.fixture
def finished(sqlite_url: str, tmp_path: Path) -> str:
    """`tiny`: three trials of one epoch, created and run through the API."""
    # a grace period a starved machine cannot miss: a worker frozen past the default 4 s had
    # its trial 0 failed by the heartbeat check and retried as trial 3
    path = write_tiny_study(tmp_path, "tiny", n_trials=3, epochs=1, heartbeat=(1, 120))
    assert api.create_study(path, sqlite_url) == api.Study("tiny", sqlite_url)
    summary = api.run_worker("tiny", sqlite_url)
    assert summary.complete + summary.pruned == 3
    return sqlite_url


def test_create_study_from_a_dict_trains_nothing(sqlite_url: str, tmp_path: Path) -> None:
    raw = tomllib.loads(write_tiny_study(tmp_path, "from-dict").read_text())
    assert api.create_study(raw, sqlite_url, trials=7).name == "from-dict"
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
    raw = tomllib.loads(write_tiny_study(tmp_path, "both", n_trials=3, epochs=1,
                                         sampler="tpe").read_text())
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


# --- one validation for every entrance ----------------------------------------------------------

def _cli_accepts(command: str, option: str, value: object) -> bool:
    """Whether `hpsearch COMMAND --OPTION value` gets past the option's own check."""
    cli = typer.main.get_command(app).commands[command]  # type: ignore[attr-defined]
    param = next(p for p in cli.params if p.name == option)
    try:
        param.process_value(typer.Context(cli), str(value))
    except typer.BadParameter:
        return False
    return True


def _api_accepts(call: Callable[[], object]) -> bool:
    """Whether an API call gets past validation: its database is unreachable (a folder that
    does not exist), so a call that passes fails there instead, having written nothing."""
    try:
        call()
    except ConfigError:
        return False
    except HpsearchError as exc:
        # where the database is reached: a file it cannot open, or no study there to join
        assert any(why in str(exc) for why in ("unable to open database file",
                                               "has no hpsearch tables")), exc
        return True
    raise AssertionError("the call reached nowhere it could write")


COUNTS = st.one_of(st.integers(-3, 3), st.integers(), st.sampled_from(
    [INT_MAX, INT_MAX + 1, 2**40, -2**31, 10**30]))
SECONDS = st.one_of(COUNTS, st.floats(allow_nan=True, allow_infinity=True))


@settings(max_examples=50, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(trials=COUNTS)
def test_create_study_bounds_trials_as_the_cli_does(tmp_path: Path, trials: int) -> None:
    """api.create_study(trials=-1 | 0 | 2**40) was stored (a worker then ran nothing and
    exited 0; on PostgreSQL 2**40 failed after Optuna's study was made)."""
    path = write_tiny_study(tmp_path, "bounded")
    nowhere = f"sqlite:///{tmp_path / 'no-such-folder' / 'x.db'}"
    assert _api_accepts(lambda: api.create_study(path, nowhere, trials=trials)) == \
        _cli_accepts("run", "trials", trials)


@settings(max_examples=50, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(timeout=SECONDS)
def test_run_worker_bounds_timeout_as_the_cli_does(tmp_path: Path, timeout: float) -> None:
    nowhere = f"sqlite:///{tmp_path / 'no-such-folder' / 'x.db'}"
    api_says = _api_accepts(lambda: api.run_worker("bounded", nowhere, timeout=timeout))
    assert api_says == _cli_accepts("worker", "timeout", timeout)
    assert api_says == _cli_accepts("run", "timeout", timeout)


@pytest.mark.parametrize("study", [None, 3, b"x.toml", ["x"]])
def test_create_study_of_something_else_is_a_config_error(study: object) -> None:
    with pytest.raises(ConfigError, match="study must be a study file's path or its content"):
        api.create_study(study, "sqlite:///unused.db")  # type: ignore[arg-type]
    assert not Path("unused.db").exists()


def test_an_out_of_bounds_study_leaves_nothing_half_made(pg_url: str, tmp_path: Path) -> None:
    """On PostgreSQL 2**40 trials failed after Optuna's study and our tables were written."""
    path = write_tiny_study(tmp_path, "half")
    with pytest.raises(ConfigError, match="n_trials must be between"):
        api.create_study(path, pg_url, trials=2**40)
    engine = make_engine(pg_url)
    try:
        assert inspect(engine).get_table_names() == []
    finally:
        engine.dispose()


def test_a_study_name_is_found_in_either_unicode_form(sqlite_url: str, tmp_path: Path) -> None:
    """'unknown study 'café' (known: 'café')': typed decomposed (e + U+0301, as some
    terminals and file systems send it), stored composed."""
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    raw = tomllib.loads(write_tiny_study(tmp_path, "x", n_trials=1, epochs=1).read_text())
    assert api.create_study({**raw, "study": {**raw["study"], "name": decomposed}},
                            sqlite_url).name == composed
    summary = api.run_worker(decomposed, sqlite_url)
    assert summary.complete + summary.pruned == 1
    for name in (composed, decomposed):
        assert [t.number for t in api.trials(name, sqlite_url)] == [0]


@pytest.mark.parametrize("call", [
    lambda url: api.run_worker(None, url),  # type: ignore[arg-type]
    lambda url: api.trials(3, url),  # type: ignore[arg-type]
    lambda url: api.best_trial(None, url),  # type: ignore[arg-type]
    lambda url: api.epochs(b"tiny", url),  # type: ignore[arg-type]
    lambda url: api.export_model(None, "m.pt", url),  # type: ignore[arg-type]
    lambda url: api.trials("tiny", 3),  # type: ignore[arg-type]
    lambda url: api.enqueue("tiny", url, params=[1]),  # type: ignore[arg-type]
    lambda url: api.report(5, "r.html", url),  # type: ignore[arg-type]
    lambda url: api.report([], "r.html", url),
    lambda url: api.export_model("tiny", "m.pt", url, trial="x"),  # type: ignore[arg-type]
    # were TypeErrors from deep inside
    lambda url: api.enqueue("tiny", url, source=3),  # type: ignore[arg-type]
    lambda url: api.export_model("tiny", None, url),  # type: ignore[arg-type]
    lambda url: api.report("tiny", 5, url),  # type: ignore[arg-type]
    lambda url: api.load_model(None),  # type: ignore[arg-type]
    lambda url: api.create_study({"study": {"name": "k", 1: 2}}, url),
], ids=["run_worker-None", "trials-int", "best_trial-None", "epochs-bytes", "export-None",
        "trials-db-int", "enqueue-params-list", "report-int", "report-no-study",
        "export-trial-str", "enqueue-source-int", "export-path-None", "report-path-int",
        "load_model-None", "create-key-int"])
def test_api_arguments_of_the_wrong_type_are_config_errors(call: Callable[[str], object],
                                                           tmp_path: Path) -> None:
    """run_worker(None) raised a bare TypeError after creating the database file."""
    db = tmp_path / "never.db"
    with pytest.raises(ConfigError, match="must be"):
        call(f"sqlite:///{db}")
    assert not db.exists()


@pytest.mark.parametrize(("table", "key", "value", "message"), [
    ("workers", "checkpoint_dir", "ckpt\x00", "control characters are not allowed"),
    ("study", "name", "tiny", "control characters are not allowed"),  # in a key, below
])
def test_a_study_given_as_a_dict_is_checked_as_its_file_is(sqlite_url: str, tmp_path: Path,
                                                            table: str, key: str, value: str,
                                                            message: str) -> None:
    """A dict skipped the file's check of every key and string: a NUL in a path, an escape
    sequence in a key were stored (a file with them is refused in one line)."""
    raw = tomllib.loads(write_tiny_study(tmp_path, "tiny").read_text())
    raw[table][key] = value
    if value == "tiny":
        raw["space"]["\x1b[31mlr"] = raw["space"].pop("lr")
    with pytest.raises(ConfigError, match=message):
        api.create_study(raw, sqlite_url)
    assert not Path(sqlite_url.removeprefix("sqlite:///")).exists()


def test_an_empty_configuration_is_not_queued(finished: str) -> None:
    """`hpsearch enqueue --params` refuses a file without values; the API queued {}: a trial
    that fixes nothing (or only the epochs, which the study's budget decides)."""
    for params in ({}, {"epochs": 5}):
        with pytest.raises(ConfigError, match="no parameter values to queue"):
            api.enqueue("tiny", finished, params=params)
    assert len(api.trials("tiny", finished)) == 3


# --- parity with the CLI: a study object and every lifecycle command ------------------------

def test_a_study_object_does_what_the_commands_do(finished: str, tmp_path: Path) -> None:
    study = api.study("tiny", finished)
    assert [t.number for t in study.trials()] == [t.number for t in api.trials("tiny", finished)]
    # warm start: another study queues this one's best two
    other = api.create_study(write_tiny_study(tmp_path, "other", n_trials=2, epochs=1),
                             finished)
    queued = other.enqueue(source="tiny", top=2)
    assert [q.new for q in queued] == [True, True]
    assert other.enqueue(source="tiny", top=2)[0].new is False  # not queued twice
    # or a dict of values, checked against the space as a file's are
    given = dict(queued[0].params)
    assert other.enqueue(params=given)[0].new is False
    with pytest.raises(ConfigError, match="nosuch \\(unknown parameter\\)"):
        other.enqueue(params={**given, "nosuch": 1})
    page = study.report(tmp_path / "tiny.html")
    assert page.read_text().startswith("<!DOCTYPE html>")
    for write in (study.report, study.export_model):  # "out/" names a folder, as in the CLI
        with pytest.raises(HpsearchError, match="a name ending in / names a folder"):
            write(f"{tmp_path}/out/")
    assert not (tmp_path / "out").exists()
    final = study.evaluate(epochs=1)
    best = study.best_trial()
    assert best is not None and final.trial_number == best.number and len(final.test_accs) == 1
    assert "stopped" in study.stop() and "resumed" in study.resume()
    backup = study.copy("tiny-backup")
    assert backup == api.Study("tiny-backup", finished)
    assert [t.params for t in backup.trials()] == [t.params for t in study.trials()]
    assert "deleted" in backup.delete()
    with pytest.raises(HpsearchError, match="unknown study 'tiny-backup'"):
        api.study("tiny-backup", finished)


@settings(max_examples=20, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(threads=COUNTS, seeds=COUNTS)
def test_threads_and_seeds_are_bounded_as_the_cli_does(tmp_path: Path, threads: int,
                                                        seeds: int) -> None:
    nowhere = f"sqlite:///{tmp_path / 'no-such-folder' / 'x.db'}"
    api_says = _api_accepts(lambda: api.run_worker("bounded", nowhere, threads=threads))
    assert api_says == _cli_accepts("worker", "threads", threads)
    assert _api_accepts(lambda: api.evaluate("bounded", nowhere, seeds=seeds)) == \
        _cli_accepts("evaluate", "seeds", seeds)
