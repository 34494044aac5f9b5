"""Engines from database URLs: the default URL, SQLite pragmas, PostgreSQL pool settings."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import NullPool

from hpsearch.errors import ConfigError

DEFAULT_URL = "sqlite:///hpsearch.db"
SQLITE_BUSY_TIMEOUT_S = 60  # several worker processes share one file; writers wait, never fail
# PostgreSQL has no client-side timeouts by default: a server that accepts TCP and never answers
# hangs libpq for ever. connect_timeout bounds connecting; TCP keepalives notice a server that
# vanished under an open connection (idle 30 s, then 3 probes 10 s apart: ~60 s); the
# statement timeout (server side) cancels a statement stuck behind a lock. Each can be
# overridden in the URL, e.g. ?connect_timeout=3 or ?options=-c%20statement_timeout=0.
PG_CONNECT_TIMEOUT_S = 10
PG_STATEMENT_TIMEOUT_MS = 300_000  # far above our slowest statement (seconds on 10,000 trials)
PG_CONNECT_DEFAULTS: dict[str, Any] = {
    "connect_timeout": PG_CONNECT_TIMEOUT_S,
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}


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
    """Keyword arguments for create_engine (shared with Optuna's RDBStorage).

    Timeouts are set on every database so that no call hangs for ever; a value the user puts
    in the URL's query string (`?connect_timeout=3`, `?timeout=5`) wins over these defaults.
    """
    parsed = make_url(url)
    if parsed.drivername.startswith("sqlite"):
        # NullPool: each use opens a fresh connection, so no connection outlives a fork and
        # writers from several processes never hold the file lock while idle.
        return {"connect_args": {"timeout": sqlite_busy_timeout(url)}, "poolclass": NullPool}
    # pre_ping: a connection dropped by a server restart is replaced instead of failing a trial
    return {"pool_pre_ping": True, "pool_size": 2, "max_overflow": 4, "pool_recycle": 1800,
            "connect_args": _postgres_connect_args(dict(parsed.query))}


def sqlite_busy_timeout(url: str) -> float:
    """How long a SQLite statement waits for another connection's lock: `?timeout=` in the
    URL, else SQLITE_BUSY_TIMEOUT_S."""
    value = make_url(url).query.get("timeout")
    try:
        return float(value) if isinstance(value, str) else SQLITE_BUSY_TIMEOUT_S
    except ValueError:
        raise ConfigError(f"?timeout= in the database URL must be a number of seconds, "
                          f"got {value!r}") from None


def _postgres_connect_args(query: dict[str, Any]) -> dict[str, Any]:
    """libpq defaults for a server that does not answer: the user's URL options win."""
    args: dict[str, Any] = {key: value for key, value in PG_CONNECT_DEFAULTS.items()
                            if key not in query}
    options = query.get("options")
    if options is None:
        args["options"] = f"-c statement_timeout={PG_STATEMENT_TIMEOUT_MS}"
    elif isinstance(options, str) and "statement_timeout" not in options:
        args["options"] = f"{options} -c statement_timeout={PG_STATEMENT_TIMEOUT_MS}"
    return args


def _sqlite_pragmas(busy_timeout_s: float) -> Callable[[Any, Any], None]:
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()
    return on_connect


def install_sqlite_pragmas(engine: Engine) -> None:
    if engine.dialect.name == "sqlite":
        busy_timeout = sqlite_busy_timeout(engine.url.render_as_string(hide_password=False))
        event.listen(engine, "connect", _sqlite_pragmas(busy_timeout))


def make_engine(url: str | None = None) -> Engine:
    """The one engine factory: every engine of ours comes from here (Optuna's RDBStorage gets
    the same engine_kwargs)."""
    full = normalise_url(database_url(url))
    engine = create_engine(full, **engine_kwargs(full))
    install_sqlite_pragmas(engine)
    return engine
