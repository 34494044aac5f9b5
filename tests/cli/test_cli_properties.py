"""Round two: no input makes hpsearch print a traceback, hang, or show a secret.

A property-based test (hypothesis) throws random study files (valid-ish and garbage TOML, with
nan, inf, huge integers, unicode and control characters) and random option values at every
command, in-process through typer's CliRunner; a smaller set runs as real `hpsearch`
processes. Every example must end with exit 0, or a non-zero exit with exactly one line
`hpsearch: error: ...` that is one of our messages (not the catch-all for unforeseen
exceptions), within a time bound, and without the database password in the output.

The runs are reproducible: `derandomize=True` fixes hypothesis's seed (derived from each test's
name), and a failure prints the example that caused it. No deadline: CI machines are slow.
"""

from __future__ import annotations

import itertools
import json
import math
import signal
import sqlite3
import subprocess
import sys
import tomllib
import types
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import typer.main
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from hpsearch.cli import app
from hpsearch.cli.oneline import UNEXPECTED
from hpsearch.db.migrate import _script, head_revision
from hpsearch.errors import ConfigError
from hpsearch.params import INT_MAX, PARAM_NAMES, TrialParams
from hpsearch.search.study_file import Categorical, Range, parse_study
from hpsearch.trainer import data as data_mod
from hpsearch.trainer import data_files
from tests.helpers import clean_env
from tests.recorded_study import build_recorded_study
from tests.study_files import VALID_STUDY

ROOT = Path(__file__).resolve().parents[2]
SECRET = "hunter2-s3cret"
EXAMPLE_SECONDS = 30  # one example that takes longer counts as a hang
CI = settings(deadline=None, derandomize=True, database=None, print_blob=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                     HealthCheck.data_too_large])
print(f"hypothesis: derandomize=True (seed fixed per test name), deadline=None, "
      f"{EXAMPLE_SECONDS} s per example", file=sys.stderr)


# --- the option surface -----------------------------------------------------------------------

def _walk(command: typing.Any, path: str) -> Iterator[tuple[str, typing.Any]]:
    for param in command.params:
        yield path, param
    for name, sub in getattr(command, "commands", {}).items():
        yield from _walk(sub, f"{path} {name}")


def _kinds(annotation: typing.Any) -> set[typing.Any]:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return set(typing.get_args(annotation)) - {type(None)}
    return {annotation}


def test_every_integer_option_is_bounded_and_every_float_option_finite() -> None:
    """The class, not the examples: an int option without a maximum reaches the database
    (OverflowError) or torch (seed overflow); a float option without the finite check lets nan
    through every range check. A new option that forgets either fails here."""
    checked = 0
    root = typer.main.get_command(app)
    context = typer.Context(root)
    for path, param in _walk(root, "hpsearch"):
        kinds = _kinds(param.type_descriptor.annotation)
        if int in kinds:
            assert param.max is not None and param.max <= INT_MAX, f"{path} {param.name}"
            assert param.min is not None and param.min >= -INT_MAX, f"{path} {param.name}"
            checked += 1
        if float in kinds:  # its callback refuses nan (finite, or a check built on it)
            assert param.callback is not None, f"{path} {param.name}"
            with pytest.raises(typer.BadParameter, match="finite"):
                param.callback(context, param, math.nan)  # typer's wrapper
            checked += 1
    assert checked >= 15


# --- strategies -------------------------------------------------------------------------------

TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
NASTY_TEXT = st.sampled_from(["--help", "-1", "x\n", "a\x00b", "\x1b[2J", "'; DROP TABLE x; --",
                              "../../etc", "", " ", "ü" * 3, "<script>", "demo", "demo\n"])
HUGE_INTS = st.sampled_from([2**31 - 1, 2**31, -2**31, 2**63, 10**20, -10**20, 10**400])
NUMBERS = st.one_of(st.integers(-5, 300), HUGE_INTS,
                    st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([math.nan, math.inf, -math.inf, 1e308, 5e-324, -0.0]))
SCALARS = st.one_of(NUMBERS, st.booleans(), TEXT, NASTY_TEXT)
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=4),
                   st.dictionaries(st.sampled_from(["low", "high", "log", "step", "x"]),
                                   SCALARS, max_size=4))


def toml_value(value: typing.Any) -> str:
    """A value as TOML text (tomllib has no writer; this covers what the strategies make)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") \
            if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # JSON escapes are TOML escapes
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


STUDY_KEYS = {"study": ["name", "sampler", "pruner", "metric", "n_trials", "timeout", "target",
                        "seed"],
              "data": ["dataset", "data_dir", "val_fraction", "subset", "synthetic_size"],
              "budget": ["max_epochs", "min_epochs"], "pruner": ["startup_trials", "x"],
              "workers": ["heartbeat_interval", "grace_period", "max_retry", "checkpoint_dir"],
              "space": [*PARAM_NAMES, "bogus"]}


@st.composite
def study_files(draw: st.DrawFn) -> bytes:
    """Mostly the valid study with a few keys set to random values; sometimes garbage."""
    kind = draw(st.sampled_from(["mutated", "mutated", "mutated", "garbage-text", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "garbage-text":
        return draw(st.text(max_size=200)).encode("utf-8", "surrogatepass")
    doc = tomllib.loads(VALID_STUDY)
    for _ in range(draw(st.integers(1, 4))):
        table = draw(st.sampled_from(sorted(STUDY_KEYS)))
        doc.setdefault(table, {})[draw(st.sampled_from(STUDY_KEYS[table]))] = draw(VALUES)
    lines = []
    for table, values in doc.items():
        lines.append(f"[{table}]")
        lines += [f"{json.dumps(k)} = {toml_value(v)}" for k, v in values.items()]
    return "\n".join(lines).encode("utf-8", "surrogatepass")


def urls(recorded: str, tmp: Path) -> st.SearchStrategy[str]:
    return st.one_of(
        st.just(recorded), st.just(recorded), st.just(recorded),
        st.sampled_from([
            f"sqlite:///{tmp}/absent.db", f"sqlite:///{tmp}/garbage.db", "not a url",
            f"{recorded}?timout=1", f"{recorded}?timeout=abc", "sqlite+nosuch:///x.db",
            f"postgresql+asyncpg://u:{SECRET}@127.0.0.1:1/x", f"mysql://u:{SECRET}@h/x",
            f"postgresql://u:{SECRET}@127.0.0.1:1/x", f"postgresql://u:{SECRET}@127.0.0.1:1/x?a=b",
            f"postgresql://u:{SECRET}@127.0.0.1:notaport/x", "sqlite:////proc/x/y.db",
            # the password in the query string, and in libpq's key=value form
            f"postgresql://u@127.0.0.1:1/x?password={SECRET}",
            f"postgresql://u@127.0.0.1:1/x?sslpassword={SECRET}&connect_timeout=1",
            f"postgresql://u@127.0.0.1:1/x?password={SECRET}&bogus=1",
            f"host=127.0.0.1 port=1 user=u password={SECRET}",
        ]),
        TEXT.map(lambda t: f"sqlite:///{tmp}/{t}"))


def int_text() -> st.SearchStrategy[str]:
    return st.one_of(st.integers(-3, 12).map(str), HUGE_INTS.map(str),
                     st.sampled_from(["nan", "inf", "1e3", "abc", "", "-1", "0x10", "٣"]))


# every command of the CLI (test_every_command_is_in_the_property_test keeps this complete)
COMMANDS = ("run", "worker", "studies", "trials", "best", "show", "compare", "export", "report",
            "evaluate", "export-model", "train", "enqueue", "dashboard", "info", "tag",
            "study delete", "study rename", "study copy", "study note", "study stop",
            "study pause", "study resume", "db upgrade", "db downgrade", "db current",
            "db check", "init")


def _leaf_commands(command: typing.Any, path: str = "") -> Iterator[str]:
    subs = getattr(command, "commands", None)
    if not subs:
        yield path.strip()
    for name, sub in (subs or {}).items():
        yield from _leaf_commands(sub, f"{path} {name}")


def test_every_command_is_in_the_property_test() -> None:
    """A command added to the CLI without a strategy here would never be tried."""
    assert sorted(_leaf_commands(typer.main.get_command(app))) == sorted(COMMANDS)


@st.composite
def command_lines(draw: st.DrawFn, recorded: str, tmp: Path) -> list[str]:
    """One command with random arguments; commands that would train for real are steered to
    where they stop early (no dataset, an unopenable database) so each example is quick."""
    db = ["--db", draw(urls(recorded, tmp))]
    name = draw(st.one_of(st.just("demo"), NASTY_TEXT, TEXT))
    command = draw(st.sampled_from(COMMANDS))
    fmt = ["--format", draw(st.sampled_from(["table", "md", "csv", "json", "toml", "xml"]))]
    if command == "run":
        (tmp / "study.toml").write_bytes(draw(study_files()))
        # never a database that works: a valid study must not start workers here
        args = ["run", str(tmp / "study.toml"), "--db", f"sqlite:///{tmp}/no/such/dir/x.db"]
        for option in draw(st.lists(st.sampled_from(["--workers", "--threads", "--trials",
                                                     "--timeout", "--top"]), max_size=3)):
            args += [option, draw(int_text())]
        return args
    if command == "worker":  # the recorded study's dataset is not there: stops before training
        return ["worker", name, *db, "--threads", draw(int_text()), "--worker-index",
                draw(int_text())]
    if command == "studies":
        return ["studies", *db, *fmt]
    if command == "trials":
        return ["trials", name, *db, *fmt, "--top", draw(int_text()), "--sort",
                draw(st.one_of(TEXT, st.sampled_from(["-lr", "number", "-seconds"])))]
    if command in ("best", "compare"):
        return [command, name, *db, *fmt]
    if command == "show":
        return ["show", name, draw(int_text()), *db, *fmt]
    if command == "export":
        return ["export", name, *db, "--what", draw(st.sampled_from(["trials", "epochs", "x"])),
                "-o", str(tmp / f"out-{draw(st.integers(0, 9))}.csv")]
    if command == "report":
        return ["report", name, *db, "--curves", draw(int_text()), "-o", str(tmp / "r.html")]
    if command == "evaluate":
        return ["evaluate", name, *db, "--trial", draw(int_text()), "--seeds", draw(int_text()),
                "--epochs", draw(int_text())]
    if command == "export-model":
        return ["export-model", name, draw(int_text()), *db, "-o",
                draw(st.sampled_from([str(tmp / "m.pt"), str(tmp), str(tmp / "no" / "m.pt")]))]
    if command == "train":
        args = ["train", "--dataset", draw(st.sampled_from(["fashion-mnist", "synthetic", "x"])),
                "--seed", draw(int_text()), "--val-fraction",
                draw(st.sampled_from(["0.1", "nan", "inf", "1", "0", "-1", "abc"]))]
        for _ in range(draw(st.integers(0, 3))):
            key = draw(st.one_of(st.sampled_from(PARAM_NAMES), TEXT))
            args += ["--set", f"{key}={draw(st.one_of(int_text(), TEXT, NASTY_TEXT))}"]
        # last, so it wins: synthetic training that passes every check ends after 20 images
        return [*args, "--epochs", "1", "--subset", "20", "--set", "hidden_dim=8",
                "--set", "channel_mlp_dim=8", "--set", "token_mlp_dim=8"]
    if command == "enqueue":
        if draw(st.booleans()):
            (tmp / "best.toml").write_bytes(draw(study_files()).replace(b"[space]", b"[params]"))
            return ["enqueue", name, "--params", str(tmp / "best.toml"), *db]
        return ["enqueue", name, "--from", draw(st.one_of(st.just("demo"), TEXT)), "--top",
                draw(int_text()), *db]
    if command == "dashboard":  # a database that works would serve until stopped: only others
        return ["dashboard", "--db", draw(urls(recorded, tmp).filter(lambda u: u != recorded)),
                "--port", draw(int_text())]
    if command == "info":  # measures a few training steps: bounded by --threads' range
        return ["info", "--device", draw(st.sampled_from(["cpu", "auto", "cuda", "tpu", ""])),
                "--threads", draw(int_text()), "--format",
                draw(st.sampled_from(["text", "json", "xml"]))]
    if command == "init":
        path = draw(st.one_of(st.sampled_from(["s.toml", ".", "no/s.toml", "garbage.db"]),
                              NASTY_TEXT))
        return ["init", path, "--example", draw(st.sampled_from(["mixer", "try", "cnn", "x"]))]
    if command == "tag":
        args = ["tag", name, draw(int_text()), *draw(st.lists(st.one_of(TEXT, NASTY_TEXT),
                                                              max_size=3)), *db]
        if draw(st.booleans()):
            args.append("--remove")
        if draw(st.booleans()):
            args += ["--note", draw(st.one_of(TEXT, NASTY_TEXT))]
        return args
    if command == "study delete":
        return ["study", "delete", name, "--yes", *db]
    if command in ("study rename", "study copy"):
        new = draw(st.one_of(NASTY_TEXT, TEXT))
        extra = ["--to-db", draw(urls(recorded, tmp))] if command == "study copy" and \
            draw(st.booleans()) else []
        return [*command.split(), name, new, *extra, *db]
    if command == "study note":
        return ["study", "note", name, draw(st.one_of(TEXT, NASTY_TEXT)), *db]
    if command in ("study stop", "study pause", "study resume"):
        return [*command.split(), name, *db]
    if command == "db downgrade":
        return ["db", "downgrade", draw(st.sampled_from(["-1", "-2", "base", "0001", "zzz", "+1",
                                                         "--bogus", "head", "-99", "", " "])),
                *(["--yes"] if draw(st.booleans()) else []), *db]
    return [*command.split(), *db]


# --- checks -----------------------------------------------------------------------------------

@contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    def hang(*_: object) -> None:
        raise TimeoutError(f"no answer within {seconds} s: a hang")
    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def assert_clean_ending(args: list[str], code: int, stdout: str, stderr: str,
                        quiet: bool) -> None:
    """Exit 0, or non-zero with one known error line, last on stderr; no traceback or secret.
    `quiet`: the command prints no progress on stderr, so the error line is all of it."""
    shown = stdout + stderr
    assert "Traceback" not in shown, (args, shown)
    assert SECRET not in shown, (args, shown)
    if code == 0:
        return
    lines = stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("hpsearch: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], (args, code, stderr)
    assert not errors[0].startswith(f"hpsearch: error: {UNEXPECTED} "), (args, errors[0])
    if quiet:
        assert len(lines) == 1, (args, stderr)


LOUD = ("run", "worker", "train", "evaluate")  # these print progress on stderr as they go


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("recorded") / "results.db"
    build_recorded_study(f"sqlite:///{path}", "demo")
    return path


@pytest.fixture
def sandbox(tmp_path: Path, recorded: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder holding a copy of the recorded database and a garbage one; no dataset is
    reachable (no Debian copy, no download), so nothing trains on real data."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(data_files, "DEBIAN_DIRS", {})
    monkeypatch.setattr(data_mod, "try_download", lambda *a: False)
    for key in ("HPSEARCH_DB", "HPSEARCH_DATA", "HPSEARCH_DEBUG"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("COLUMNS", "200")
    (tmp_path / "garbage.db").write_bytes(bytes(range(256)) * 40)
    return tmp_path


@settings(CI, max_examples=250)
@given(data=st.data())
def test_every_command_ends_cleanly_in_memory(data: st.DataObject, sandbox: Path,
                                               recorded: Path) -> None:
    db = sandbox / "results.db"
    db.write_bytes(recorded.read_bytes())  # fresh each example: db commands write to it
    args = data.draw(command_lines(f"sqlite:///{db}", sandbox), label="args")
    with time_limit(EXAMPLE_SECONDS):
        result = CliRunner().invoke(app, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        (args, repr(result.exception))
    assert_clean_ending(args, result.exit_code, result.stdout, result.stderr,
                        quiet=args[0] not in LOUD)


@pytest.mark.slow
@settings(CI, max_examples=12)
@given(study=study_files(), extra=st.lists(st.sampled_from(
    [["--timeout", "nan"], ["--trials", str(10**20)], ["--workers", "0"], ["--top", "-1"]]),
    max_size=1))
def test_hpsearch_run_as_a_process_ends_cleanly(study: bytes, extra: list[list[str]],
                                                tmp_path_factory: pytest.TempPathFactory
                                                ) -> None:
    """The real entry point (python -m hpsearch): one line on stderr, nothing written for a
    bad study; a valid one runs its two tiny trials."""
    tmp = tmp_path_factory.mktemp("proc")
    (tmp / "study.toml").write_bytes(study)
    args = [sys.executable, "-m", "hpsearch", "run", "study.toml", "--db",
            f"sqlite:///{tmp}/r.db", "--threads", "1", *(extra[0] if extra else [])]
    proc = subprocess.run(args, cwd=tmp, env=clean_env(tmp), capture_output=True, text=True,
                          timeout=120)
    assert_clean_ending(args, proc.returncode, proc.stdout, proc.stderr, quiet=False)
    if proc.returncode == 2:  # refused: nothing written
        assert sorted(p.name for p in tmp.iterdir()) == ["cache", "study.toml"] or \
            sorted(p.name for p in tmp.iterdir()) == ["study.toml"], list(tmp.iterdir())


@settings(CI, max_examples=400)
@given(study=study_files())
def test_an_accepted_study_can_be_stored_and_every_corner_is_a_valid_model(study: bytes
                                                                           ) -> None:
    """Checked before anything is written: a study that parses holds only finite numbers,
    integers that fit the database, no control characters, and every range end and choice
    makes valid parameters. Otherwise it is one ConfigError."""
    try:
        config = parse_study(tomllib.loads(study.decode()), "study")
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, ConfigError):
        return
    text = json.dumps([config.spec_json(), config.settings_json()], allow_nan=False)  # no nan/inf
    assert "\\u0000" not in text
    for value in (config.n_trials, config.seed, config.max_epochs):
        assert abs(value) <= INT_MAX
    assert config.timeout is None or math.isfinite(config.timeout)
    # every combination of range ends and choices, as a trial resolves it (a combination of
    # valid values, nesterov with momentum 0, stopped the worker that sampled it)
    corners = {name: dim.choices if isinstance(dim, Categorical) else (dim.low, dim.high)
               for name, dim in config.space.items()}
    assert all(isinstance(dim, Categorical | Range) for dim in config.space.values())
    for values in itertools.islice(itertools.product(*corners.values()), 4096):
        picked = dict(zip(corners, values, strict=True))
        TrialParams.from_dict(config.resolve(lambda name, _dim, picked=picked: picked[name]))


def test_db_downgrade_minus_one_works_as_its_help_says(recorded: Path, tmp_path: Path) -> None:
    db = tmp_path / "results.db"
    db.write_bytes(recorded.read_bytes())
    help_text = CliRunner().invoke(app, ["db", "downgrade", "--help"]).stdout
    assert "-1 for one step" in help_text
    head = head_revision()
    previous = _script().get_revision(head).down_revision
    result = CliRunner().invoke(app, ["db", "downgrade", "-1", "--yes", "--db", f"sqlite:///{db}"])
    assert result.exit_code == 0, result.stderr
    assert f"downgraded from {head} to {previous}" in result.stdout
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT version_num FROM hps_alembic_version").fetchall() == \
            [(previous,)]
    conn.close()
