"""Engines from database URLs: the default URL, SQLite pragmas, PostgreSQL pool settings."""

from __future__ import annotations

import os
import sqlite3
import time
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import NullPool

from hpsearch.errors import ConfigError
from hpsearch.masking import mask_secrets

DEFAULT_URL = "sqlite:///hpsearch.db"
# the query options SQLAlchemy's pysqlite driver reads from a sqlite:/// URL (without uri=true)
SQLITE_URL_OPTIONS = frozenset({"uri", "timeout", "isolation_level", "detect_types",
                                "check_same_thread", "cached_statements"})
MAX_SQLITE_TIMEOUT_S = 2_147_483  # SQLite's busy timeout is an int of milliseconds
SQLITE_BUSY_TIMEOUT_S = 60  # several worker processes share one file; writers wait, never fail
# PostgreSQL has no client-side timeouts by default: a server that accepts TCP and never answers
# hangs libpq for ever. These are libpq's own settings: connect_timeout bounds connecting; TCP
# keepalives notice a server that vanished under an idle connection (idle 30 s, then 3 probes
# 10 s apart: ~60 s), tcp_user_timeout one that vanished while data was in flight (30 s
# unacknowledged). Each can be overridden in the URL, e.g. ?connect_timeout=3.
PG_CONNECT_DEFAULTS: dict[str, Any] = {
    "connect_timeout": 10,  # s
    "tcp_user_timeout": 30_000,  # ms
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}
# Server-side settings of every session of ours and Optuna's (a `-c` in the URL's ?options=
# wins, e.g. ?options=-c%20statement_timeout=0):
# - statement_timeout cancels a statement stuck behind a lock (far above our slowest statement,
#   seconds on 10,000 trials);
# - idle_in_transaction_session_timeout ends a session that sits in an open transaction: a
#   client cut off mid-transaction (a partition, a dead machine) leaves its session half-open
#   on the server, and whatever it locked (a trial's heartbeat row, the study's trial-slot
#   lock) would otherwise stay locked until the server notices the dead peer (hours: the
#   kernel's TCP keepalive). Our transactions and Optuna's never wait on the client for more
#   than milliseconds between statements; read-only scopes switch it off (session.py's
#   connection_scope(reader=True));
# - tcp_keepalives_*: the server probes a silent client as the client probes the server, so a
#   session whose client vanished outside a transaction ends within ~60 s too.
PG_SESSION_SETTINGS: dict[str, int] = {
    "statement_timeout": 300_000,  # ms
    "idle_in_transaction_session_timeout": 60_000,  # ms
    "tcp_keepalives_idle": 30,  # s
    "tcp_keepalives_interval": 10,
    "tcp_keepalives_count": 3,
}


def database_url(url: str | None = None) -> str:
    """--db, else $HPSEARCH_DB, else hpsearch.db in the working directory. An empty --db is
    kept (and refused as malformed): `--db "$DB"` with DB unset is not the default database."""
    if url is not None:
        return url
    return os.environ.get("HPSEARCH_DB") or DEFAULT_URL


def normalise_url(url: str) -> str:
    """Validate a SQLAlchemy URL; plain postgresql:// URLs use psycopg 3."""
    try:
        parsed = make_url(url)
        parsed.port  # noqa: B018 - a non-numeric port only fails when read
    except (ArgumentError, ValueError) as exc:
        # shown only where it cannot hold a password: a malformed one may hide it anywhere
        shown = url if "@" not in url and mask_secrets(url) == url else "<malformed URL>"
        source = " (from $HPSEARCH_DB)" if url == os.environ.get("HPSEARCH_DB") else ""
        raise ConfigError(f"malformed database URL {shown!r}{source}: {exc}; expected "
                          "sqlite:///FILE or postgresql+psycopg://USER@HOST:PORT/DB") from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if not (parsed.drivername.startswith("sqlite") or parsed.drivername.startswith("postgresql")):
        raise ConfigError(
            f"unsupported database {parsed.drivername!r}: use sqlite:///FILE or "
            "postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB"
        )
    if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
        # each connection would get its own empty database: "no such table" at the first read
        raise ConfigError("an in-memory SQLite database keeps nothing between connections or "
                          "processes: name a file, sqlite:///FILE")
    _check_driver_and_options(parsed)
    return parsed.render_as_string(hide_password=False)


def _check_driver_and_options(parsed: URL) -> None:
    """A missing driver or a bad URL option is a setup problem to name in one line, not a
    traceback at the first connection. (PostgreSQL's own options are checked by libpq when
    connecting, and reported then.)"""
    if parsed.get_backend_name() == "sqlite" and parsed.query.get("uri") not in ("true", "1"):
        # SQLAlchemy would only warn and drop them: a mistyped timeout would silently not apply
        unknown = sorted(set(parsed.query) - SQLITE_URL_OPTIONS)
        if unknown:
            raise ConfigError(f"unknown option(s) {', '.join(unknown)} in database URL "
                              f"{mask_url(str(parsed))!r} (SQLite takes: "
                              f"{', '.join(sorted(SQLITE_URL_OPTIONS))})")
    try:
        dialect = parsed.get_dialect()
        dialect.import_dbapi()
        dialect().create_connect_args(parsed)  # converts the URL's options: timeout=abc fails
    except ImportError as exc:
        raise ConfigError(f"database driver for {parsed.drivername!r} is not installed "
                          f"({exc}); use postgresql+psycopg:// or sqlite:///") from None
    except ArgumentError as exc:  # an unknown dialect name such as sqlite+nosuch
        raise ConfigError(f"unsupported database {parsed.drivername!r}: {exc}") from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"bad option in database URL {mask_url(str(parsed))!r}: "
                          f"{exc}") from None
    timeout = parsed.query.get("timeout")
    # sqlite3 turns a busy timeout that is no whole number of ms (inf, nan, 1e400) into 0:
    # "wait as long as needed" would become "fail at once"
    if parsed.get_backend_name() == "sqlite" and isinstance(timeout, str) and not (
            0 <= float(timeout) <= MAX_SQLITE_TIMEOUT_S):
        raise ConfigError(f"?timeout= in database URL {mask_url(str(parsed))!r} must be 0 to "
                          f"{MAX_SQLITE_TIMEOUT_S:,} seconds, got {timeout}")


def mask_url(url: str) -> str:
    """A database URL as shown or logged: every secret in it (password, ?password=,
    ?sslpassword=, ...) replaced by ***; one that does not parse shows nothing of itself."""
    try:
        rendered = make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return "<malformed URL>"
    return mask_secrets(rendered)


def engine_kwargs(url: str) -> dict[str, Any]:
    """Keyword arguments for create_engine (shared with Optuna's RDBStorage).

    Timeouts are set on every database so that no call hangs for ever; a value the user puts
    in the URL's query string (`?connect_timeout=3`, `?timeout=5`) wins over these defaults.
    """
    parsed = make_url(url)
    if parsed.drivername.startswith("sqlite"):
        # NullPool: each use opens a fresh connection, so no connection outlives a fork and
        # writers from several processes never hold the file lock while idle.
        # sqlite3's busy timeout: `?timeout=` (normalise_url checked it is a number) or ours
        timeout = float(parsed.query.get("timeout", SQLITE_BUSY_TIMEOUT_S))
        return {"connect_args": {"timeout": timeout}, "poolclass": NullPool}
    # pre_ping: a connection dropped by a server restart is replaced instead of failing a trial.
    # A worker shares one pool between its writes, Optuna's storage and the trial-slot lock:
    # 2 connections kept, a 3rd opened only while the lock, a heartbeat and a call overlap
    # (docs/distributed.md: what that means for one server's max_connections).
    return {"pool_pre_ping": True, "pool_size": 2, "max_overflow": 1, "pool_recycle": 1800,
            "connect_args": _postgres_connect_args(dict(parsed.query))}


def _postgres_connect_args(query: dict[str, Any]) -> dict[str, Any]:
    """libpq defaults for a server that does not answer, and the server-side session settings
    (PG_SESSION_SETTINGS): the user's URL options win."""
    args: dict[str, Any] = {key: value for key, value in PG_CONNECT_DEFAULTS.items()
                            if key not in query}
    options = query.get("options")
    given = options if isinstance(options, str) else ""
    added = " ".join(f"-c {key}={value}" for key, value in PG_SESSION_SETTINGS.items()
                     if key not in given)
    if options is None or isinstance(options, str):
        args["options"] = f"{given} {added}".strip()
    return args


def _use_wal(cursor: Any, busy_timeout_s: float) -> None:
    """Switch the file to WAL (readers never block the writer; the mode is stored in the file).

    Switching needs the file to itself, and where SQLite sees that waiting could deadlock (other
    connections opening a new file at the same moment: several workers' first start) it fails
    at once with "database is locked" instead of calling its busy handler. So the switch is
    retried here, for as long as any other statement would wait."""
    deadline = time.monotonic() + busy_timeout_s
    delay = 0.01
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.5)


def make_engine(url: str | None = None) -> Engine:
    """The one engine factory: every engine of ours comes from here, and every connection
    Optuna's storage uses comes from the pool of one (hpsearch.search.study.open_storage)."""
    full = normalise_url(database_url(url))
    kwargs = engine_kwargs(full)
    engine = create_engine(full, **kwargs)
    if engine.dialect.name == "sqlite":
        busy_timeout_s = kwargs["connect_args"]["timeout"]

        @event.listens_for(engine, "connect")
        def on_connect(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            _use_wal(cursor, busy_timeout_s)
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()
    return engine
