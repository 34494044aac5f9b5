"""Our Alembic migrations on SQLite and PostgreSQL, beside Optuna's own schema."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import optuna
import pytest
from sqlalchemy import delete, func, inspect, select, text, update
from sqlalchemy.orm import Session

from hpsearch.db.engine import make_engine
from hpsearch.db.migrate import (
    VERSION_TABLE,
    current_revision,
    downgrade,
    downgrade_losses,
    ensure_schema,
    head_revision,
    require_schema,
    schema_drift,
    upgrade,
)
from hpsearch.db.models import Epoch, Evaluation, Study, Trial
from hpsearch.errors import HpsearchError
from hpsearch.params import TrialParams
from hpsearch.search.study import open_storage
from hpsearch.search.study_file import WorkerOptions
from tests.db_rows import add_ensemble
from tests.helpers import hps, one_error_line
from tests.recorded_study import build_recorded_study
from tests.study_files import write_tiny_study

OUR_TABLES = {"hps_study", "hps_trial", "hps_epoch"}
OPTUNA_TABLES = {"alembic_version", "studies", "trials", "trial_params", "trial_values",
                 "trial_intermediate_values", "trial_heartbeats", "version_info"}
UNREACHABLE = "postgresql+psycopg://hps:s3cret@127.0.0.1:1/hps"  # nothing listens on port 1
FUTURE_REVISION = "9999_from_the_future"

optuna.logging.set_verbosity(optuna.logging.WARNING)


def table_names(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def scalar(url: str, sql: str) -> object:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(text(sql)).scalar()
    finally:
        engine.dispose()


def execute(url: str, *statements: str) -> None:
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            for sql in statements:
                conn.execute(text(sql))
    finally:
        engine.dispose()


def stamp_future_revision(url: str) -> None:
    """What a newer hpsearch would leave behind: a revision this code has never heard of."""
    execute(url, f"CREATE TABLE {VERSION_TABLE} (version_num VARCHAR(32) PRIMARY KEY)",
            f"INSERT INTO {VERSION_TABLE} VALUES ('{FUTURE_REVISION}')")


def test_upgrade_creates_our_tables_without_drift(db_url: str) -> None:
    assert current_revision(db_url) is None
    upgrade(db_url)
    assert OUR_TABLES | {VERSION_TABLE} <= table_names(db_url)
    assert current_revision(db_url) == head_revision()
    assert schema_drift(db_url) == []
    require_schema(db_url)


def test_indexes_constraints_and_cascades_exist(db_url: str) -> None:
    upgrade(db_url)
    engine = make_engine(db_url)
    try:
        inspector = inspect(engine)
        assert {ix["name"] for ix in inspector.get_indexes("hps_trial")} >= {
            "ix_hps_trial_study_value", "ix_hps_trial_study_state"}
        with Session(engine) as session, session.begin():
            now = datetime.now(UTC)
            study = Study(name="s", optuna_study_id=1, spec={}, settings={}, dataset="d")
            trial = Trial(study=study, number=0, optuna_trial_id=1, state="complete", params={},
                          seed=0, worker="h:1", started_at=now)
            session.add(Epoch(trial=trial, epoch=1, train_loss=1, train_acc=0.5, val_loss=1,
                              val_acc=0.5, lr=0.1, seconds=1, images_per_s=10))
        with Session(engine) as session, session.begin():  # ON DELETE CASCADE down to epochs
            session.execute(delete(Study))
        with Session(engine) as session:
            assert session.scalar(select(func.count()).select_from(Epoch)) == 0
    finally:
        engine.dispose()


def test_coexists_with_optuna_schema(db_url: str) -> None:
    study = optuna.create_study(storage=db_url, study_name="coexist")
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    optuna_revision = scalar(db_url, "SELECT version_num FROM alembic_version")

    upgrade(db_url)
    assert schema_drift(db_url) == []  # Optuna's tables are not ours to compare
    assert scalar(db_url, "SELECT version_num FROM alembic_version") == optuna_revision
    assert len(optuna.load_study(study_name="coexist", storage=db_url).trials) == 2

    downgrade(db_url, "base")
    names = table_names(db_url)
    assert not OUR_TABLES & names
    assert names >= OPTUNA_TABLES
    assert current_revision(db_url) is None
    assert scalar(db_url, "SELECT version_num FROM alembic_version") == optuna_revision
    assert len(optuna.load_study(study_name="coexist", storage=db_url).trials) == 2


@pytest.mark.parametrize("tables", [
    # another application's own Alembic (its version row: not Optuna's, no version_info)
    ("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)",
     "INSERT INTO alembic_version VALUES ('1a2b3c4d')"),
    # another application's studies and trials
    ("CREATE TABLE studies (id INTEGER PRIMARY KEY, title VARCHAR(50))",
     "CREATE TABLE trials (id INTEGER PRIMARY KEY, name VARCHAR(50))"),
], ids=["their-alembic", "their-studies"])
def test_a_database_with_another_applications_tables_under_optunas_names_is_refused_untouched(
        db_url: str, tables: tuple[str, ...], tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Optuna would fail on them only after making its other tables (and we ours): one line
    first, nothing created."""
    execute(db_url, *tables)
    before = table_names(db_url)
    study = write_tiny_study(tmp_path, "mine", n_trials=1, epochs=1, dry_run=0.01)
    for args in (("db", "upgrade"), ("run", str(study), "--threads", "1")):
        code, _, err = hps(capsys, monkeypatch, *args, "--db", db_url)
        assert code != 0
        assert "another application's tables under names Optuna uses" in one_error_line(err)
        assert table_names(db_url) == before


def test_upgrade_after_downgrade_and_ensure_schema_are_idempotent(db_url: str) -> None:
    ensure_schema(db_url)
    downgrade(db_url, "base")
    ensure_schema(db_url)
    ensure_schema(db_url)
    upgrade(db_url)
    assert current_revision(db_url) == head_revision()


def test_the_head_is_the_newest_file_and_each_revision_follows_the_one_before() -> None:
    """head_revision reads the versions folder's file names, so a command at head need not
    import Alembic: each revision must be named by its number and follow the one before."""
    from hpsearch.db.migrate import _script

    scripts = sorted(_script().walk_revisions(), key=lambda script: script.revision)
    for number, script in enumerate(scripts, 1):
        assert script.revision == f"{number:04d}", script.path
        assert Path(script.path).name.startswith(f"{script.revision}_"), script.path
        assert script.down_revision == (f"{number - 1:04d}" if number > 1 else None)
    assert head_revision() == _script().get_current_head() == scripts[-1].revision


def _create_schema(url: str, barrier: Any) -> str | None:
    """What every command that writes does first (ours, then Optuna's tables), started at
    once with the other processes; the error line, if any."""
    barrier.wait()
    try:
        ensure_schema(url)
        storage = open_storage(url, WorkerOptions())
        storage.engine.dispose()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres",
                                                            marks=pytest.mark.postgres)])
def test_processes_starting_together_on_a_new_database_create_the_schema_once(
        backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Two `hpsearch run` (or several workers) started together on a new database: failed 6
    of 6 on SQLite (`UNIQUE constraint failed: alembic_version.version_num`, Optuna's tables
    created twice). Forked processes, kept for every repetition, so the test takes seconds."""
    processes, repetitions = 4, 20
    server = request.getfixturevalue("postgres_server") if backend == "postgres" else None
    context = multiprocessing.get_context("fork")
    errors: list[str] = []
    with context.Manager() as manager, ProcessPoolExecutor(processes, mp_context=context) as pool:
        for repetition in range(repetitions):
            url = (server.url(server.create_database()) if server is not None
                   else f"sqlite:///{tmp_path / f'new-{repetition}.db'}")
            barrier = manager.Barrier(processes)
            results = [pool.submit(_create_schema, url, barrier) for _ in range(processes)]
            errors += [error for future in results if (error := future.result())]
            assert current_revision(url) == head_revision()
            assert table_names(url) >= OPTUNA_TABLES
    assert errors == [], f"{len(errors)} of {processes * repetitions} failed: {errors[0]}"


def test_newer_schema_is_refused_and_left_untouched(db_url: str) -> None:
    stamp_future_revision(db_url)
    before = table_names(db_url)
    for action in (ensure_schema, upgrade, require_schema):
        with pytest.raises(HpsearchError, match=f"revision {FUTURE_REVISION} is newer than this "
                           f"hpsearch \\(head {head_revision()}\\); upgrade hpsearch"):
            action(db_url)
    assert table_names(db_url) == before
    assert current_revision(db_url) == FUTURE_REVISION


def test_require_schema_explains_a_missing_schema(sqlite_url: str) -> None:
    with pytest.raises(HpsearchError, match=r"has no hpsearch tables \(no such file: .*\); "
                       "run `hpsearch db upgrade"):
        require_schema(sqlite_url)
    assert not Path(sqlite_url.removeprefix("sqlite:///")).exists()  # reading created nothing


def test_require_schema_masks_the_password(pg_url: str) -> None:
    with_password = pg_url.replace("hps@", "hps:s3cret@")  # trust auth ignores it
    with pytest.raises(HpsearchError, match="has no hpsearch tables") as error:
        require_schema(with_password)
    assert "s3cret" not in str(error.value)
    assert "hps:***@" in str(error.value)


def test_drift_is_reported(db_url: str) -> None:
    upgrade(db_url)
    execute(db_url, "ALTER TABLE hps_study ADD COLUMN extra INTEGER")
    drift = schema_drift(db_url)
    assert [diff[0] for diff in drift] == ["remove_column"]
    assert drift[0][3].name == "extra"


def test_unknown_downgrade_target_is_one_line(sqlite_url: str) -> None:
    upgrade(sqlite_url)
    with pytest.raises(HpsearchError, match="no_such_revision") as error:
        downgrade(sqlite_url, "no_such_revision")
    assert "\n" not in str(error.value)


def test_unreachable_server_is_one_line_without_password() -> None:
    for action in (current_revision, ensure_schema, require_schema, schema_drift):
        with pytest.raises(HpsearchError, match="cannot use database") as error:
            action(UNREACHABLE)
        message = str(error.value)
        assert "\n" not in message
        assert "s3cret" not in message
        assert "hps:***@127.0.0.1:1/hps" in message


# --- the `hpsearch db` commands, end to end ---------------------------------------------------

def hpsearch(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HPSEARCH_DB", "HPSEARCH_DEBUG")}
    return subprocess.run([sys.executable, "-m", "hpsearch", *args], capture_output=True,
                          text=True, timeout=60, cwd=cwd, env=env)


def test_db_commands_end_to_end(db_url: str, tmp_path: Path) -> None:
    head = head_revision()
    current = hpsearch("db", "current", "--db", db_url, cwd=tmp_path)
    assert (current.returncode, current.stdout.strip()) == (0, "none (no hpsearch tables)")

    upgraded = hpsearch("db", "upgrade", "--db", db_url, cwd=tmp_path)
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"upgraded from empty to {head} (head)" in upgraded.stdout

    current = hpsearch("db", "current", "--db", db_url, cwd=tmp_path)
    assert current.stdout.strip() == f"{head} (head)"

    checked = hpsearch("db", "check", "--db", db_url, cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    execute(db_url, "ALTER TABLE hps_epoch ADD COLUMN extra INTEGER")
    checked = hpsearch("db", "check", "--db", db_url, cwd=tmp_path)
    assert checked.returncode == 1
    assert "remove_column hps_epoch.extra" in checked.stdout


@pytest.mark.parametrize("command", ["upgrade", "current", "check"])
def test_db_commands_on_an_unreachable_server_fail_in_one_line(command: str,
                                                               tmp_path: Path) -> None:
    result = hpsearch("db", command, "--db", UNREACHABLE, cwd=tmp_path)
    assert result.returncode not in (0, 1)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("hpsearch: error: cannot use database")
    assert "Traceback" not in result.stderr
    assert "s3cret" not in result.stdout + result.stderr


def test_db_commands_do_not_import_torch(sqlite_url: str, tmp_path: Path) -> None:
    code = ("import sys\nfrom hpsearch.cli import app\n"
            f"app(['db', 'upgrade', '--db', {sqlite_url!r}], standalone_mode=False)\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stderr


FIXTURE_0002 = Path(__file__).parents[1] / "fixtures" / "release-0002.db"


def test_full_records_migration_fills_a_database_of_the_previous_release(tmp_path: Path) -> None:
    """tests/fixtures/release-0002.db was written by the release before 0003 (trial rows held
    only the sampled values). Upgrading fills every row from its study's stored TOML, keeps every
    epoch (a batch rebuild of hps_study with foreign keys on would cascade-delete them), and
    downgrading gives back the old rows."""
    path = tmp_path / "old.db"
    path.write_bytes(FIXTURE_0002.read_bytes())
    url = f"sqlite:///{path}"
    before = {r[0]: json_value(r[1]) for r in rows(url, "SELECT number, params FROM hps_trial")}
    epochs = scalar(url, "SELECT count(*) FROM hps_epoch")
    assert before and epochs and current_revision(url) == "0002"

    upgrade(url)
    assert current_revision(url) == head_revision() and schema_drift(url) == []
    assert scalar(url, "SELECT count(*) FROM hps_epoch") == epochs
    assert scalar(url, "SELECT count(*) FROM hps_evaluation") == 1
    for number, params, sampled in rows(url, "SELECT number, params, sampled FROM hps_trial"):
        params, sampled = json_value(params), json_value(sampled)
        assert sampled == list(before[number])
        assert {k: params[k] for k in sampled} == before[number]
        # fixed in the study's [space] or [budget], and defaults: all on the row now
        assert params["token_mlp_dim"] == 16 and params["channel_mlp_dim"] == 32
        assert params["batch_size"] == 64 and params["epochs"] == 3
        assert params["weight_decay"] == 0.0
    space = json_value(scalar(url, "SELECT spec FROM hps_study"))["space"]
    assert space["lr"] == {"name": "FloatDistribution",
                           "attributes": {"low": 0.001, "high": 0.01, "log": True, "step": None}}
    assert space["patch_size"]["attributes"]["choices"] == [7, 14]
    assert "token_mlp_dim" not in space

    # 0005: the options the old trainer hard-coded are stated on each row, as they ran
    for (params,) in rows(url, "SELECT params FROM hps_trial"):
        params = json_value(params)
        assert params["plateau_patience"] == 2 and params["beta2"] == 0.999
        # completed with that release's defaults (momentum 0.9, Nesterov), not today's
        assert params["momentum"] == 0.9 and params["nesterov"] is True
        TrialParams.from_dict(params)  # a complete, valid record

    downgrade(url, "0002")
    after = {r[0]: json_value(r[1]) for r in rows(url, "SELECT number, params FROM hps_trial")}
    assert after == before
    assert scalar(url, "SELECT count(*) FROM hps_epoch") == epochs


def test_a_release_0002_study_fixing_gamma_1_upgrades_with_its_fixed_values(
        tmp_path: Path) -> None:
    """A study of release 0002 whose [space] fixes gamma = 1.0, which today's parser refuses
    (gamma must be < 1): the upgrade reads the stored file as that release did, so every trial
    keeps the scheduler the study fixed, with the gamma its plateau scheduler ran with (the old
    trainer turned 1 into 0.1: 0005), and the seed of its first attempt."""
    path = tmp_path / "old.db"
    path.write_bytes(FIXTURE_0002.read_bytes())
    url = f"sqlite:///{path}"
    execute(url, "UPDATE hps_study SET config = json_set(config, '$.space.scheduler', "
                 "'plateau', '$.space.gamma', 1.0, '$.study.seed', 5)",
            "UPDATE hps_trial SET retried_from = 1 WHERE number = 3")
    upgrade(url)
    trials = rows(url, "SELECT number, params, seed FROM hps_trial ORDER BY number")
    assert len(trials) == 4
    for number, params, seed in trials:
        params = json_value(params)
        assert (params["scheduler"], params["gamma"]) == ("plateau", 0.1)
        assert (params["token_mlp_dim"], params["channel_mlp_dim"]) == (16, 32)
        assert (params["batch_size"], params["precision"], params["epochs"]) == (64, "fp32", 3)
        assert seed == 5 + (1 if number == 3 else number)
    spec = json_value(scalar(url, "SELECT spec FROM hps_study"))
    assert spec["fixed"]["gamma"] == 1.0 and spec["seed"] == 5  # the file as it was written
    assert set(spec["space"]) == {"patch_size", "hidden_dim", "lr", "optimizer"}


def rows(url: str, sql: str) -> list[tuple[object, ...]]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql))]
    finally:
        engine.dispose()


def json_value(value: object) -> object:
    return json.loads(value) if isinstance(value, str) else value


def _every_table_filled(url: str) -> None:
    """A recorded study plus what it lacks: an evaluation, an ensemble, tags and notes, rung
    epochs (a data fraction): every table of ours and every optional column holds data."""
    build_recorded_study(url, "full")
    engine = make_engine(url)
    with Session(engine) as session, session.begin():
        trial = session.scalars(select(Trial).order_by(Trial.number)).first()
        assert trial is not None
        session.add(Evaluation(trial_id=trial.id, seed=0, epochs=3, test_acc=0.8, test_loss=0.5,
                               curve=[{"epoch": 1, "train_loss": 1.0}],
                               checkpoint_path="final.pt", seconds=2.0))
        session.add(add_ensemble(trial.study_id, trial.number))
        trial.tags, trial.note = ["keeper"], "the one"
        session.execute(update(Study).values(note="a study note"))
        session.execute(update(Epoch).values(fraction=0.5))
    engine.dispose()


def _snapshot(url: str) -> dict[str, dict[Any, dict[str, Any]]]:
    """Every row of every table of ours, by id: {table: {id: {column: value}}}."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            names = [t for t in inspect(conn).get_table_names()
                     if t.startswith("hps_") and t != VERSION_TABLE]
            return {t: {row["id"]: dict(row) for row in
                        conn.execute(text(f"SELECT * FROM {t}")).mappings()} for t in names}
    finally:
        engine.dispose()


def _revisions_below_head() -> list[str]:
    from hpsearch.db.migrate import _script

    return [s.revision for s in _script().walk_revisions()][1:] + ["base"]


@pytest.mark.parametrize("target", _revisions_below_head())
def test_every_downgrade_says_what_it_drops_and_drops_nothing_else(
        target: str, db_url: str) -> None:
    """Down to `target` and back up, with data in every table: each value that did not come
    back is in the list `hpsearch db downgrade` shows before asking (one step down nulled every
    hps_epoch.fraction, down to 0002 dropped ensembles, tags and notes, both without a word)."""
    url = db_url
    _every_table_filled(url)
    before = _snapshot(url)
    losses = downgrade_losses(url, target)
    assert current_revision(url) == head_revision()  # the trial downgrade left no trace
    downgrade(url, target)
    upgrade(url)
    after = _snapshot(url)
    lost: set[str] = set()
    for table, rows in before.items():
        for key, row in rows.items():
            back = after.get(table, {}).get(key)
            if back is None:
                lost.add(table)
                continue
            lost |= {f"{table}.{column}" for column, value in row.items()
                     if back.get(column) != value}
    undeclared = {what for what in lost if what not in losses and what.split(".")[0] not in losses}
    assert not undeclared, f"lost without a word: {sorted(undeclared)} (declared: {losses})"
