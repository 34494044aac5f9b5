"""Engines from database URLs: the default URL, SQLite pragmas, PostgreSQL pool settings."""

from __future__ import annotations

import os
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import NullPool

from hpsearch.errors import ConfigError

DEFAULT_URL = "sqlite:///hpsearch.db"
# the query options SQLAlchemy's pysqlite driver reads from a sqlite:/// URL (without uri=true)
SQLITE_URL_OPTIONS = frozenset({"uri", "timeout", "isolation_level", "detect_types",
                                "check_same_thread", "cached_statements"})
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
