"""Shared fixtures: results-database URLs on SQLite and on a real, throwaway PostgreSQL server.

The PostgreSQL cluster starts once per test session (initdb ~1 s) in its own temporary folder on
a free loopback port, so several pytest processes can run side by side; each test that asks for
`pg_url` gets a fresh database. Without PostgreSQL server binaries those tests are skipped, and
the report header and the skip reason say so.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
from hypothesis import settings

# Hypothesis fails an example that runs over 200 ms by default: a timing test in disguise, which a
# loaded machine fails. No property test here is about speed.
settings.register_profile("hpsearch", deadline=None)
settings.load_profile("hpsearch")

# The signal tests send SIGINT and SIGHUP to the processes they start. Started from a
# background job of a shell without job control, those inherit SIGINT ignored, and under
# `nohup` SIGHUP ignored (as a long check runs), and hpsearch keeps an ignored stop signal
# ignored, as the shell and nohup ask. The tests are about the signals arriving, so their
# processes start with the defaults.
signal.signal(signal.SIGINT, signal.default_int_handler)
signal.signal(signal.SIGHUP, signal.SIG_DFL)

PG_BIN_ENV = "HPSEARCH_PG_BIN"  # folder holding initdb and pg_ctl, to override the search
PG_USER = "hps"
PG_HOST = "127.0.0.1"
# A throwaway cluster: durability off makes CREATE DATABASE and commits fast.
PG_SETTINGS = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"


def find_pg_bin() -> Path | None:
    """$HPSEARCH_PG_BIN, else the newest /usr/lib/postgresql/N/bin, else pg_ctl on PATH."""
    def major(path: str) -> int:
        found = re.search(r"/(\d+)/bin$", path)
        return int(found.group(1)) if found else 0

    candidates = [os.environ.get(PG_BIN_ENV, "")]
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=major, reverse=True)
    on_path = shutil.which("pg_ctl")
    candidates.append(str(Path(on_path).parent) if on_path else "")
    for folder in filter(None, candidates):
        if (Path(folder) / "initdb").is_file() and (Path(folder) / "pg_ctl").is_file():
            return Path(folder)
    return None


def _run_as() -> list[str]:
    """initdb and postgres refuse to run as root: run them as the postgres user then."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((PG_HOST, 0))
        return sock.getsockname()[1]


@dataclass
class PostgresServer:
    """A PostgreSQL cluster in `root` (data, socket and log), trust auth, user `hps`."""

    bin_dir: Path
    root: Path
    port: int = 0
    running: bool = field(default=False, init=False)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        return self.root / "server.log"

    @property
    def base_url(self) -> str:
        return f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{self.port}"

    def url(self, dbname: str = "postgres") -> str:
        return f"{self.base_url}/{dbname}"

    def conninfo(self, dbname: str = "postgres") -> str:
        return f"host={PG_HOST} port={self.port} user={PG_USER} dbname={dbname}"

    def _pg(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*_run_as(), str(self.bin_dir / tool), *args], cwd=self.root,
                              capture_output=True, text=True, timeout=60)

    def initdb(self) -> None:
        done = self._pg("initdb", "-D", str(self.data_dir), "-U", PG_USER, "-A", "trust",
                        "--no-sync", "--no-instructions", "-E", "UTF8", "--locale=C")
        if done.returncode:
            raise RuntimeError(f"initdb failed: {done.stderr.strip()}")

    def start(self) -> None:
        """Start on self.port, or on a fresh free port if none was chosen yet (retried: another
        process may grab the port between choosing and binding it)."""
        fixed_port = self.port != 0
        for _ in range(1 if fixed_port else 5):
            self.port = self.port if fixed_port else free_port()
            options = (f"-h {PG_HOST} -p {self.port} -k {shlex.quote(str(self.root))} "
                       f"{PG_SETTINGS}")
            done = self._pg("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file),
                            "-o", options, "-w", "-t", "30", "start")
            if done.returncode == 0:
                self.running = True
                return
        log_tail = self.log_file.read_text(errors="replace")[-2000:] if self.log_file.exists() \
            else ""
        raise RuntimeError(f"PostgreSQL did not start: {done.stderr.strip()}\n{log_tail}")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server; mode fast (clients disconnected) or immediate (as if it crashed)."""
        self._pg("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "stop")
        self.running = False

    def restart(self, down_s: float = 0.0, mode: str = "fast") -> None:
        """Stop, stay down for `down_s` seconds, start again on the same port."""
        self.stop(mode)
        time.sleep(down_s)
        self.start()

    def reap_when_gone(self, pid: int) -> None:
        """Stop and delete the cluster once process `pid` is gone, even if it never got to
        tear down (killed by a CI timeout, SIGKILL): a detached shell polls for it."""
        stop = shlex.join([*_run_as(), str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir),
                           "-m", "immediate", "stop"])
        script = (f"while kill -0 {pid} 2>/dev/null; do sleep 1; done; {stop} >/dev/null 2>&1; "
                  f"rm -rf {shlex.quote(str(self.root))}")
        subprocess.Popen(["sh", "-c", script], start_new_session=True, stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def create_database(self) -> str:
        name = f"t_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self.conninfo(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.conninfo(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _skip_reason() -> str | None:
    if find_pg_bin() is None:
        return (f"PostgreSQL NOT TESTED: no initdb/pg_ctl in ${PG_BIN_ENV}, "
                "/usr/lib/postgresql/*/bin or PATH (apt-get install postgresql-15)")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "PostgreSQL NOT TESTED: running as root and there is no `postgres` user"
    return None


def pytest_report_header() -> str:
    reason = _skip_reason()
    return reason or f"postgresql: {find_pg_bin()} (throwaway cluster per session)"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses the server, so `-m "not postgres"` deselects them."""
    for item in items:
        if {"pg_url", "postgres_server"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    root = Path(tempfile.mkdtemp(prefix="hps-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, user="postgres")
    server = PostgresServer(bin_dir=find_pg_bin(), root=root)  # type: ignore[arg-type]
    try:
        server.initdb()
        server.start()
        server.reap_when_gone(os.getpid())
        yield server
    finally:
        if server.running:
            server.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database on the session's server, dropped afterwards."""
    if not postgres_server.running:  # an earlier test stopped it and failed before restarting
        postgres_server.start()
    name = postgres_server.create_database()
    yield postgres_server.url(name)
    if postgres_server.running:
        postgres_server.drop_database(name)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'hpsearch.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """The same test on SQLite and on PostgreSQL (the server starts only if needed)."""
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


@pytest.fixture(scope="module")
def three_trials(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real tiny study of three 2-epoch trials (synthetic data), run once per module; tests
    work on copies of its database (`three_trials_url`)."""
    from tests.helpers import run_in_process
    from tests.study_files import write_tiny_study

    folder = tmp_path_factory.mktemp("three-trials")
    run_in_process(write_tiny_study(folder, n_trials=3, epochs=2),
                   f"sqlite:///{folder / 'h.db'}", device="cpu")
    return folder


@pytest.fixture
def three_trials_url(three_trials: Path, tmp_path: Path) -> str:
    """A copy of `three_trials`' database, this test's own."""
    from tests.db_rows import sqlite_copy

    return sqlite_copy(three_trials, tmp_path)
