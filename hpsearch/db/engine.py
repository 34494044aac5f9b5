"""Engines from database URLs: the default URL, SQLite pragmas, PostgreSQL pool settings."""

from __future__ import annotations

import os
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import NullPool

from hpsearch.errors import ConfigError

DEFAULT_URL = "sqlite:///hpsearch.db"
SQLITE_BUSY_TIMEOUT_S = 60  # several worker processes share one file; writers wait, never fail


def database_url(url: str | None = None) -> str:
    """--db, else $HPSEARCH_DB, else hpsearch.db in the working directory."""
    return url or os.environ.get("HPSEARCH_DB") or DEFAULT_URL


def normalise_url(url: str) -> str:
    """Validate a SQLAlchemy URL; plain postgresql:// URLs use psycopg 3."""
    try:
        parsed = make_url(url)
        parsed.port  # noqa: B018 - a non-numeric port only fails when read
    except (ArgumentError, ValueError) as exc:
        raise ConfigError(f"malformed database URL {mask_url(url)!r}: {exc}") from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if not (parsed.drivername.startswith("sqlite") or parsed.drivername.startswith("postgresql")):
        raise ConfigError(
            f"unsupported database {parsed.drivername!r}: use sqlite:///FILE or "
            "postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB"
        )
    return parsed.render_as_string(hide_password=False)


def mask_url(url: str) -> str:
    """The URL with its password replaced by ***, for anything shown or logged."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return "<malformed URL>"


def engine_kwargs(url: str) -> dict[str, Any]:
    """Keyword arguments for create_engine (shared with Optuna's RDBStorage)."""
    if make_url(url).drivername.startswith("sqlite"):
        # NullPool: each use opens a fresh connection, so no connection outlives a fork and
        # writers from several processes never hold the file lock while idle.
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}, "poolclass": NullPool}
    # pre_ping: a connection dropped by a server restart is replaced instead of failing a trial
    return {"pool_pre_ping": True, "pool_size": 2, "max_overflow": 4, "pool_recycle": 1800}


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def install_sqlite_pragmas(engine: Engine) -> None:
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)


def make_engine(url: str | None = None) -> Engine:
    full = normalise_url(database_url(url))
    engine = create_engine(full, **engine_kwargs(full))
    install_sqlite_pragmas(engine)
    return engine
