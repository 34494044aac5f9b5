"""Bad input to every command, run as a user runs it (a subprocess): one line on stderr that
starts with `hpsearch: error:`, no traceback, a non-zero exit code, and the database exactly as it
was (or not created at all). Click's own usage errors (an option outside its declared range)
are one line too, with exit code 2 and a pointer to the command's --help.
"""

from __future__ import annotations

import hashlib
import os
import random
import sqlite3
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers import ROOT, clean_env
from tests.study_files import VALID_STUDY

UNREACHABLE = "postgresql+psycopg://u:secret@127.0.0.1:1/x"



def study(old: str = "", new: str = "", append: str = "") -> str:
    """The valid study with `old` replaced by `new` (which must be there), plus `append`."""
    assert old in VALID_STUDY, old
    return (VALID_STUDY.replace(old, new, 1) if old else VALID_STUDY) + append


@dataclass(frozen=True)
class Case:
    """`args` may use {db} (a copy of a recorded study's SQLite file), {new_db} (a SQLite URL
    whose file must not appear), {tmp} (the test's folder) and {study} (study.toml written
    from `toml`)."""

    id: str
    args: tuple[str, ...]
    expect: str  # a fragment of the error line
    toml: str | bytes | None = None
    # "recorded" | "newer" (schema stamped 'ffff') | "newer-optuna" (Optuna's tables from a
    # later Optuna) | "garbage" (random bytes) | "truncated" (the first 5000 bytes) |
    # "unwritable-checkpoints" (the study's stored checkpoint_dir under /proc) | "empty" (a
    # file of 0 bytes) | "none"
    db: str = "none"
    usage: bool = False  # a click usage error (declared option range): click's format
    forbidden: tuple[str, ...] = field(default=())  # must not appear anywhere in the output


RUN = ("run", "{study}", "--db", "{new_db}", "--threads", "1")
TRAIN = ("train", "--dataset", "synthetic", "--epochs", "1")

CASES = [
    # study files (`hpsearch run`): all checked before anything is written
    Case("run-malformed-toml", RUN, "malformed TOML", toml="[study\nname = 'x'\n"),
    Case("run-missing-file", ("run", "{tmp}/absent.toml", "--db", "{new_db}"),
         "cannot read study file"),
    Case("run-unknown-table", RUN, "unknown table(s) bogus", toml=study(append="[bogus]\nx=1\n")),
    Case("run-unknown-study-key", RUN, "unknown key(s) in [study]: trials",
         toml=study("n_trials = 2", "trials = 2")),
    Case("run-unknown-space-param", RUN, "unknown key(s) in [space]: depth",
         toml=study(append="depth = [1, 2]\n")),
    Case("run-wrong-type-n-trials", RUN, "n_trials must be int",
         toml=study("n_trials = 2", 'n_trials = "ten"')),
    Case("run-wrong-type-space", RUN, "hidden_dim must be int",
         toml=study("hidden_dim = { low = 16, high = 32 }", 'hidden_dim = "big"')),
    Case("run-low-above-high", RUN, "low (32) is greater than high (16)",
         toml=study("hidden_dim = { low = 16, high = 32 }",
                    "hidden_dim = { low = 32, high = 16 }")),
    Case("run-log-range-low-zero", RUN, "a log range needs low > 0",
         toml=study("lr = { low = 1e-3, high = 1e-2, log = true }",
                    "lr = { low = 0.0, high = 1e-2, log = true }")),
    Case("run-patch-size-not-dividing", RUN, "patch_size 5 does not divide",
         toml=study("patch_size = [7, 14]", "patch_size = [7, 5]")),
    Case("run-unknown-sampler", RUN, "unknown sampler 'bayes'",
         toml=study('sampler = "random"', 'sampler = "bayes"')),
    Case("run-unknown-pruner", RUN, "unknown pruner 'asha'",
         toml=study('pruner = "none"', 'pruner = "asha"')),
    Case("run-unknown-optimiser", RUN, "unknown optimizer 'lion'",
         toml=study('optimizer = ["adam", "sgd"]', 'optimizer = ["adam", "lion"]')),
    Case("run-unknown-initialiser", RUN, "unknown init 'orthogonal'",
         toml=study(append='init = "orthogonal"\n')),
    # the objectives: checked before the database is created
    Case("run-unknown-metric", RUN, "unknown metric 'test_acc'",
         toml=study('seed = 0', 'seed = 0\nmetric = "test_acc"')),
    Case("run-metric-and-objectives", RUN, "give [study] metric or objectives, not both",
         toml=study('seed = 0', 'seed = 0\nmetric = "val_acc"\nobjectives = ["val_acc"]')),
    Case("run-unknown-measure", RUN, "unknown measure 'flops'",
         toml=study('seed = 0', 'seed = 0\nobjectives = ["val_acc:max", "flops:min"]')),
    Case("run-bad-direction", RUN, "the direction must be max or min",
         toml=study('seed = 0', 'seed = 0\nobjectives = ["val_acc:max", "params:lowest"]')),
    Case("run-first-objective-not-per-epoch", RUN, "the first objective must be val_acc or",
         toml=study('seed = 0', 'seed = 0\nobjectives = ["params:min", "val_acc:max"]')),
    Case("run-repeated-objective", RUN, "objectives name val_acc more than once",
         toml=study('seed = 0', 'seed = 0\nobjectives = ["val_acc:max", "val_acc:min"]')),
    Case("run-unknown-pruned-objective", RUN,
         "[pruner] objective 'val_los' is not one of the study's objectives measured every "
         "epoch (choose from: val_acc)",
         toml=study('pruner = "none"',
                    'pruner = "median"\nobjectives = ["val_acc:max", "params:min"]',
                    '[pruner]\nobjective = "val_los"\n')),
    Case("run-pruned-objective-not-per-epoch", RUN,
         "[pruner] objective 'params' is not one of the study's objectives measured every "
         "epoch (choose from: val_acc)",
         toml=study('pruner = "none"',
                    'pruner = "median"\nobjectives = ["val_acc:max", "params:min"]',
                    '[pruner]\nobjective = "params"\n')),
    Case("run-multi-objective-cmaes", RUN, "sampler 'cmaes' takes one objective",
         toml=study('sampler = "random"',
                    'sampler = "cmaes"\nobjectives = ["val_loss:min", "params:min"]')),
    Case("run-zero-max-epochs", RUN, "max_epochs must be at least 1",
         toml=study("max_epochs = 2", "max_epochs = 0")),
    Case("run-negative-max-epochs", RUN, "max_epochs must be at least 1",
         toml=study("max_epochs = 2", "max_epochs = -3")),
    Case("run-unknown-dataset", RUN, "unknown dataset 'imagenet'",
         toml=study('dataset = "synthetic"', 'dataset = "imagenet"')),
    # a dataset known by name that is neither here nor downloadable (no network): said before
    # the study is made, not by each worker after
    Case("run-dataset-not-here", RUN, "kmnist not found",
         toml=study('dataset = "synthetic"', 'dataset = "kmnist"')),
    Case("run-grace-not-above-heartbeat", RUN, "grace_period must exceed heartbeat_interval",
         toml=study("grace_period = 4", "grace_period = 2",)
         .replace("heartbeat_interval = 1", "heartbeat_interval = 5")),
    Case("run-unknown-device", (*RUN, "--device", "tpu"), "unknown device 'tpu'",
         toml=study()),
    Case("run-unreachable-database", ("run", "{study}", "--db", UNREACHABLE),
         "cannot use database postgresql+psycopg://u:***@127.0.0.1:1/x", toml=study(),
         forbidden=("secret",)),
    Case("run-newer-schema", ("run", "{study}", "--db", "{db}"),
         "newer than this hpsearch", toml=study(), db="newer"),
    # round two, class 7: bad files and environments
    Case("run-binary-study-file", RUN, "not a study file: not UTF-8 text",
         toml=bytes(range(256)) * 4),
    Case("run-device-file-as-study", ("run", "/dev/zero", "--db", "{new_db}"),
         "not a study file (not a regular file)"),
    Case("train-binary-config", ("train", "--config", "{study}"), "not a config file",
         toml=b"\xff\xfe[params]\x00"),
    Case("run-newer-optuna-tables", ("run", "{study}", "--db", "{db}"),
         "no longer compatible with the table schema", toml=study(), db="newer-optuna"),
    Case("studies-corrupt-sqlite", ("studies", "--db", "{db}"), "file is not a database",
         db="garbage"),
    Case("trials-truncated-sqlite", ("trials", "demo", "--db", "{db}"),
         "database disk image is malformed", db="truncated"),
    Case("run-corrupt-sqlite", RUN[:2] + ("--db", "{db}"), "file is not a database",
         toml=study(), db="garbage"),
    Case("studies-missing-driver", ("studies", "--db", "postgresql+asyncpg://u:secret@h/x"),
         "database driver for 'postgresql+asyncpg' is not installed", forbidden=("secret",)),
    Case("studies-in-memory-sqlite", ("studies", "--db", "sqlite://"),
         "an in-memory SQLite database keeps nothing between connections or processes"),
    Case("run-in-memory-sqlite", RUN[:2] + ("--db", "sqlite:///:memory:"),
         "name a file, sqlite:///FILE", toml=study()),
    Case("studies-unknown-sqlite-option", ("studies", "--db", "sqlite:///x.db?timout=5"),
         "unknown option(s) timout in database URL"),
    Case("studies-bad-sqlite-option-value", ("studies", "--db", "sqlite:///x.db?timeout=abc"),
         "bad option in database URL"),
    # sqlite3 would make an infinite busy timeout 0: "fail at once" (nothing written either)
    Case("db-upgrade-infinite-sqlite-timeout", ("db", "upgrade", "--db", "{new_db}?timeout=inf"),
         "must be 0 to 2,147,483 seconds, got inf"),
    Case("studies-unknown-postgres-option", ("studies", "--db", UNREACHABLE + "?bogus=1"),
         'invalid connection option "bogus"', forbidden=("secret",)),
    Case("show-huge-trial-number", ("show", "demo", "99999999999999999999", "--db", "{db}"),
         "less than or equal to 2147483647", db="recorded", usage=True),
    Case("trials-huge-top", ("trials", "demo", "--top", "99999999999999999999", "--db", "{db}"),
         "less than or equal to 2147483647", db="recorded", usage=True),
    Case("evaluate-huge-seeds", ("evaluate", "demo", "--seeds", "99999999999999999999", "--db",
                                 "{db}"), "Invalid value for '--seeds'", db="recorded",
         usage=True),
    Case("train-huge-seed", (*TRAIN, "--seed", "99999999999999999999"),
         "Invalid value for '--seed'", usage=True),
    Case("run-n-trials-beyond-int4", RUN, "n_trials must be between",
         toml=study("n_trials = 2", "n_trials = 2147483648")),
    Case("run-huge-space-int", RUN, "space.hidden_dim: high must be between",
         toml=study("hidden_dim = { low = 16, high = 32 }",
                    "hidden_dim = { low = 16, high = 99999999999999999999 }")),
    Case("run-synthetic-size-too-big", RUN, "synthetic_size must be at most 1,000,000",
         toml=study("synthetic_size = 300", "synthetic_size = 2000000000")),
    Case("train-set-lr-nan", (*TRAIN, "--set", "lr=nan"), "lr must be a finite number"),
    Case("train-set-overflowing-float", (*TRAIN, "--set", "weight_decay=1e400"),
         "weight_decay must be a finite number"),
    # round two, class 8: checked before anything is written
    Case("run-timeout-nan", RUN, "timeout must be a finite number",
         toml=study("seed = 0", "seed = 0\ntimeout = nan")),
    Case("run-timeout-option-inf", (*RUN, "--timeout", "inf"), "must be a finite number",
         toml=study(), usage=True),
    Case("run-range-to-inf", RUN, "high must be a finite number",
         toml=study("lr = { low = 1e-3, high = 1e-2, log = true }",
                    "lr = { low = 1e-3, high = inf, log = true }")),
    Case("run-nan-choice", RUN, "dropout must be a finite number",
         toml=study(append="dropout = [0.1, nan]\n")),
    Case("run-name-like-an-option", RUN, "study name '--help' must be",
         toml=study('name = "bad-input"', 'name = "--help"')),
    Case("run-name-trailing-newline", RUN, "control characters are not allowed",
         toml=study('name = "bad-input"', 'name = "bad-input\\n"')),
    Case("run-name-control-character", RUN, "control characters are not allowed",
         toml=study('name = "bad-input"', 'name = "bad\\u001b[2Jinput"')),
    Case("run-nul-in-checkpoint-dir", RUN, "control characters are not allowed",
         toml=study('checkpoint_dir = "checkpoints"', 'checkpoint_dir = "check\\u0000points"')),
    Case("run-grid-too-fine", RUN, "the grid has more than",
         toml=study('sampler = "random"', 'sampler = "grid"')
         .replace("hidden_dim = { low = 16, high = 32 }", "hidden_dim = [16, 32]")
         .replace("lr = { low = 1e-3, high = 1e-2, log = true }",
                  "lr = { low = 1e-3, high = 1e-2, step = 1e-300 }")),
    # `hpsearch train`
    Case("train-zero-epochs-usage", ("train", "--dataset", "synthetic", "--epochs", "0"),
         "Invalid value for '--epochs'", usage=True),
    Case("train-val-fraction-one-usage", (*TRAIN, "--val-fraction", "1"),
         "must be between 0 and 1 (both excluded), got 1.0", usage=True),
    Case("train-negative-epochs", (*TRAIN[:3], "--set", "epochs=-1"),
         "epochs must be at least 1, got -1"),
    Case("train-unknown-optimiser", (*TRAIN, "--set", "optimizer=lion"),
         "unknown optimizer 'lion'"),
    Case("train-unknown-initialiser", (*TRAIN, "--set", "init=orthogonal"),
         "unknown init 'orthogonal'"),
    Case("train-wrong-type", (*TRAIN, "--set", "lr=abc"), "lr must be float, got 'abc'"),
    Case("train-patch-size-not-dividing", (*TRAIN, "--set", "patch_size=5"),
         "patch_size 5 does not divide"),
    Case("train-unknown-dataset", ("train", "--dataset", "imagenet"),
         "unknown dataset 'imagenet'"),
    Case("train-malformed-config", ("train", "--config", "{study}"), "malformed TOML",
         toml="[params\nlr = 1\n"),
    Case("train-missing-data-files",
         ("train", "--dataset", "mnist", "--data-dir", "{tmp}/empty", "--epochs", "1"),
         "mnist not found (looked in: {tmp}/empty"),
    # databases
    Case("studies-malformed-url", ("studies", "--db", "not a url"),
         "malformed database URL 'not a url': "),
    # `--db "$DB"` with DB unset: not the default database in the working directory
    Case("studies-empty-url", ("studies", "--db", ""), "malformed database URL '': "),
    Case("studies-malformed-url-with-a-password", ("studies", "--db", "postgresql://u:s3cret@h:"
                                                   "port/db"), "malformed database URL "
         "'<malformed URL>'", forbidden=("s3cret",)),
    Case("studies-unsupported-url", ("studies", "--db", "mysql://u:secret@h/x"),
         "unsupported database 'mysql'", forbidden=("secret",)),
    Case("studies-unreachable-url", ("studies", "--db", UNREACHABLE),
         "cannot use database postgresql+psycopg://u:***@127.0.0.1:1/x", forbidden=("secret",)),
    Case("studies-missing-sqlite-file", ("studies", "--db", "{new_db}"),
         "no hpsearch tables (no such file: "),
    Case("studies-empty-sqlite-file", ("studies", "--db", "{db}"), "no hpsearch tables",
         db="empty"),
    Case("trials-empty-sqlite-file", ("trials", "demo", "--db", "{db}"), "no hpsearch tables",
         db="empty"),
    # commands that write into a study that must exist create no database to say it does not
    Case("worker-missing-sqlite-file", ("worker", "demo", "--db", "{new_db}", "--threads", "1"),
         "no hpsearch tables (no such file: "),
    Case("worker-empty-sqlite-file", ("worker", "demo", "--db", "{db}", "--threads", "1"),
         "no hpsearch tables", db="empty"),
    Case("evaluate-missing-sqlite-file", ("evaluate", "demo", "--db", "{new_db}"),
         "no hpsearch tables (no such file: "),
    Case("evaluate-ensemble-empty-sqlite-file", ("evaluate", "demo", "--ensemble", "2", "--db",
                                                 "{db}"), "no hpsearch tables", db="empty"),
    Case("study-copy-missing-sqlite-file", ("study", "copy", "demo", "d2", "--db", "{new_db}"),
         "no hpsearch tables (no such file: "),
    Case("study-copy-unknown-to-a-new-file", ("study", "copy", "nope", "d2", "--db", "{db}",
                                              "--to-db", "sqlite:///{tmp}/copy.db"),
         "no hpsearch study 'nope'", db="recorded"),
    Case("trials-newer-schema", ("trials", "demo", "--db", "{db}"),
         "schema revision ffff is newer than this hpsearch", db="newer"),
    Case("db-upgrade-newer-schema", ("db", "upgrade", "--db", "{db}"),
         "schema revision ffff is newer than this hpsearch", db="newer"),
    Case("db-downgrade-unknown-revision", ("db", "downgrade", "zzz", "--yes", "--db", "{db}"),
         "Can't locate revision identified by 'zzz'", db="recorded"),
    Case("db-downgrade-empty-revision", ("db", "downgrade", "", "--yes", "--db", "{db}"),
         "no revision given", db="recorded"),
    Case("db-downgrade-unconfirmed", ("db", "downgrade", "base", "--db", "{db}"),
         "to base without confirmation (dropping hps_epoch: ", db="recorded"),
    # studies and trials that do not exist
    Case("study-stop-unknown", ("study", "stop", "nope", "--db", "{db}"),
         "unknown study 'nope'", db="recorded"),
    Case("trials-unknown-study", ("trials", "nope", "--db", "{db}"), "unknown study 'nope'",
         db="recorded"),
    Case("best-unknown-study", ("best", "nope", "--db", "{db}"), "unknown study 'nope'",
         db="recorded"),
    Case("compare-unknown-study", ("compare", "demo", "nope", "--db", "{db}"),
         "unknown study 'nope'", db="recorded"),
    Case("worker-unknown-study", ("worker", "nope", "--db", "{db}", "--threads", "1"),
         "unknown study 'nope'", db="recorded"),
    Case("show-unknown-trial", ("show", "demo", "999", "--db", "{db}"),
         "study 'demo' has no trial 999", db="recorded"),
    Case("study-delete-unknown-unconfirmed", ("study", "delete", "nope", "--db", "{db}"),
         "no study 'nope' in", db="recorded"),
    Case("trials-no-columns", ("trials", "demo", "--columns", " , ", "--db", "{db}"),
         "--columns names no column", db="recorded"),
    # notes and tags: printed to terminals and reports
    Case("tag-empty", ("tag", "demo", "0", " ", "--db", "{db}"), "tag ' ': a tag is",
         db="recorded"),
    Case("tag-comma", ("tag", "demo", "0", "a,b", "--db", "{db}"), "without commas",
         db="recorded"),
    Case("tag-note-escape", ("tag", "demo", "0", "--note", "\x1b[31mred", "--db", "{db}"),
         "note: control characters are not allowed", db="recorded"),
    Case("study-note-escape", ("study", "note", "demo", "\x1b[2J", "--db", "{db}"),
         "note: control characters are not allowed", db="recorded"),
    Case("trials-unknown-sort", ("trials", "demo", "--sort", "nonsense", "--db", "{db}"),
         "unknown sort column 'nonsense'", db="recorded"),
    # outputs that cannot be written
    Case("export-unwritable", ("export", "demo", "-o", "/nonexistent/dir/x.csv", "--db", "{db}"),
         "cannot write /nonexistent/dir/x.csv", db="recorded"),
    Case("report-unwritable", ("report", "demo", "-o", "/proc/x.html", "--db", "{db}"),
         "cannot write /proc/x.html", db="recorded"),
    # a name ending in / names a folder: not silently written as a file of that name
    Case("export-to-a-folder-name", ("export", "demo", "-o", "{tmp}/out/", "--db", "{db}"),
         "refusing to write {tmp}/out/: a name ending in / names a folder", db="recorded"),
    Case("report-to-a-folder-name", ("report", "demo", "-o", "out/", "--db", "{db}"),
         "refusing to write out/: a name ending in / names a folder", db="recorded"),
    Case("export-model-to-a-folder-name", ("export-model", "demo", "-o", "out/", "--db", "{db}"),
         "names a folder", db="recorded"),
    # folders the results would go to, checked before any work (before the database is written)
    Case("run-unwritable-checkpoint-dir", RUN, "cannot write checkpoints to /proc/hps/bad-input",
         toml=study('checkpoint_dir = "checkpoints"', 'checkpoint_dir = "/proc/hps"')),
    Case("run-checkpoint-dir-through-a-file", RUN, "study.toml is not a folder",
         toml=study('checkpoint_dir = "checkpoints"', 'checkpoint_dir = "study.toml/ck"')),
    Case("run-unwritable-log-dir", (*RUN, "--log-dir", "/proc/hps-logs"),
         "cannot write worker logs to /proc/hps-logs/bad-input", toml=VALID_STUDY),
    Case("worker-unwritable-checkpoint-dir", ("worker", "demo", "--db", "{db}"),
         "cannot write checkpoints to /proc/hps/demo", db="unwritable-checkpoints"),
    Case("evaluate-unwritable-final-weights", ("evaluate", "demo", "--db", "{db}"),
         "cannot write final weights to /proc/hps/demo", db="unwritable-checkpoints"),
]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def recorded_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A recorded study's SQLite file, written by another process so that no connection of
    ours keeps it open (every copy of it is then a complete, checkpointed database)."""
    path = tmp_path_factory.mktemp("recorded") / "results.db"
    code = ("import sys; from tests.recorded_study import build_recorded_study; "
            "build_recorded_study(sys.argv[1], 'demo')")
    subprocess.run([sys.executable, "-c", code, f"sqlite:///{path}"], cwd=ROOT, check=True,
                   timeout=120)
    return path


def hpsearch(args: list[str], tmp: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hpsearch", *args], cwd=tmp,
                          env=clean_env(tmp), capture_output=True, text=True, timeout=timeout)


def prepare(case: Case, tmp: Path, recorded_file: Path) -> tuple[list[str], Path | None]:
    """Write the case's files; returns the command line and its SQLite file (if any)."""
    (tmp / "empty").mkdir()
    (tmp / "cache").mkdir()
    db_file: Path | None = None
    if case.db != "none":
        db_file = tmp / "results.db"
        db_file.write_bytes(recorded_file.read_bytes())
        if case.db in ("newer", "newer-optuna"):
            with sqlite3.connect(db_file) as conn:
                if case.db == "newer":
                    conn.execute("UPDATE hps_alembic_version SET version_num = 'ffff'")
                else:
                    conn.execute("UPDATE alembic_version SET version_num = 'v99.0.0.a'")
                    conn.execute("UPDATE version_info SET schema_version = 99, "
                                 "library_version = '99.0.0'")
            conn.close()
        elif case.db == "unwritable-checkpoints":
            with sqlite3.connect(db_file) as conn:
                conn.execute("UPDATE hps_study SET settings = json_set(settings, "
                             "'$.workers.checkpoint_dir', '/proc/hps')")
            conn.close()
        elif case.db == "garbage":
            db_file.write_bytes(random.Random(0).randbytes(8192))
        elif case.db == "truncated":
            db_file.write_bytes(recorded_file.read_bytes()[:5000])
        elif case.db == "empty":
            db_file.write_bytes(b"")
    if isinstance(case.toml, bytes):
        (tmp / "study.toml").write_bytes(case.toml)
    elif case.toml is not None:
        (tmp / "study.toml").write_text(case.toml)
    values = {"db": f"sqlite:///{db_file}", "new_db": f"sqlite:///{tmp / 'new.db'}",
              "tmp": str(tmp), "study": str(tmp / "study.toml")}
    return [arg.format(**values) for arg in case.args], db_file


def row_counts(db_file: Path) -> dict[str, int] | None:
    try:
        return _row_counts(db_file)
    except sqlite3.DatabaseError:  # a damaged file: compared byte for byte only
        return None


def _row_counts(db_file: Path) -> dict[str, int]:
    with sqlite3.connect(f"file:{db_file}?mode=ro", uri=True) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        counts = {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
    conn.close()
    return counts


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(case: Case, tmp_path: Path,
                                                   recorded_file: Path) -> None:
    args, db_file = prepare(case, tmp_path, recorded_file)
    before = (sha256(db_file), row_counts(db_file)) if db_file else None
    files_before = sorted(p.name for p in tmp_path.iterdir())

    proc = hpsearch(args, tmp_path)

    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    expect = case.expect.format(tmp=tmp_path)
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("hpsearch: error: "), proc.stderr
    assert expect in lines[0], lines[0]
    assert not lines[0].startswith("hpsearch: error: unexpected"), lines[0]  # a known error
    if case.usage:  # click's usage error, shortened to one line
        assert proc.returncode == 2 and "--help`" in lines[0], lines[0]
    for secret in case.forbidden:
        assert secret not in proc.stdout + proc.stderr
    # nothing written: the database byte for byte, and no new files (no database created, no
    # log or checkpoint folders, no half-written output)
    if db_file is not None:
        assert (sha256(db_file), row_counts(db_file)) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == files_before


def test_at_least_25_cases_across_commands() -> None:
    assert len(CASES) >= 70
    commands = {c.args[0] for c in CASES}
    assert {"run", "train", "studies", "trials", "best", "show", "compare", "export", "report",
            "worker", "db"} <= commands


def test_debug_shows_the_traceback(tmp_path: Path, recorded_file: Path) -> None:
    case = next(c for c in CASES if c.id == "show-unknown-trial")
    args, db_file = prepare(case, tmp_path, recorded_file)
    before = sha256(db_file)  # type: ignore[arg-type]
    proc = hpsearch(["--debug", *args], tmp_path)  # an option of the root command
    assert proc.returncode != 0
    assert "Traceback (most recent call last)" in proc.stderr
    assert "has no trial 999" in proc.stderr.strip().splitlines()[-1]
    assert sha256(db_file) == before  # type: ignore[arg-type]


def test_root_options_and_command_order() -> None:
    from typer.testing import CliRunner

    from hpsearch.cli import app

    help_text = CliRunner().invoke(app, ["--help"]).stdout
    assert "--debug" in help_text and "--version" in help_text
    listed = [line.split()[0] for line in help_text.split("Commands:")[1].splitlines()
              if line.startswith("  ") and not line.startswith("   ")]
    # in the order of a first day: init writes the study that run starts
    assert listed[:14] == ["init", "run", "worker", "studies", "trials", "best", "show",
                           "compare", "export", "report", "evaluate", "train", "study", "db"]
    version = CliRunner().invoke(app, ["--version"])
    assert version.exit_code == 0 and version.stdout.startswith("hpsearch 0.")


@pytest.mark.parametrize("command", [("run", "fifo.toml", "--db", "sqlite:///new.db"),
                                     ("train", "--config", "fifo.toml")])
def test_a_fifo_as_a_study_file_is_refused_before_it_is_opened(tmp_path: Path,
                                                               command: tuple[str, ...]) -> None:
    """A FIFO with no writer blocked `run` in open() for ever."""
    os.mkfifo(tmp_path / "fifo.toml")
    proc = hpsearch(list(command), tmp_path, timeout=60)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"hpsearch: error: fifo.toml: not a {'study' if command[0] == 'run' else 'config'} "
        "file (not a regular file)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo.toml"]


def test_train_out_of_memory_names_the_size(tmp_path: Path) -> None:
    """Torch's allocator failing is a RuntimeError: it read `unexpected RuntimeError`."""
    proc = hpsearch([*TRAIN, "--set", "channel_mlp_dim=2000000000"], tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "hpsearch: error: out of memory: DefaultCPUAllocator: can't allocate memory: you "
        "tried to allocate "), proc.stderr
