"""The one way into the database: a session scope and a connection scope.

As Optuna's `_create_scoped_session`: commit at the end, roll back on any error, always close;
driver errors leave as one `DatabaseError` (transient or permanent, one line, URL masked).
Nothing here waits out an outage: inside a trial a database error ends the trial, which is
resumed from its checkpoint; a worker waits for the database between trials
(hpsearch.search.worker).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from hpsearch.db.engine import make_engine
from hpsearch.db.errors import as_database_error


def _url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


@contextmanager
def translating(url: str) -> Iterator[None]:
    """Database errors raised in the block leave it as DatabaseError (no retrying)."""
    try:
        yield
    except Exception as exc:
        error = as_database_error(exc, url)
        if error is None or error is exc:
            raise
        raise error from exc


@contextmanager
def session_scope(engine: Engine, **options: Any) -> Iterator[Session]:
    """A Session in one transaction: committed when the block ends, rolled back on an error,
    always closed. Database errors become DatabaseError."""
    with translating(_url(engine)):
        session = Session(engine, **options)
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()


@contextmanager
def connection_scope(engine: Engine, *, write: bool = False,
                     reader: bool = False) -> Iterator[Connection]:
    """A Connection in one transaction (committed at the end, rolled back on an error): for
    reads that stream rows, for migrations, and with `write` for checks and writes that must
    see one database state (begin_write). Database errors become DatabaseError.

    `reader`: a read-only scope that may work between its queries for a while (a report's
    figures, a study copied meanwhile). It holds no lock a writer waits for, so PostgreSQL's
    bound on a transaction left idle (engine.PG_SESSION_SETTINGS) is switched off for it.
    """
    with translating(_url(engine)), engine.begin() as conn:
        if write:
            begin_write(conn)
        elif reader and conn.dialect.name == "postgresql":
            conn.exec_driver_sql("SET LOCAL idle_in_transaction_session_timeout = 0")
        yield conn


@contextmanager
def url_scope(url: str | None, **options: Any) -> Iterator[Connection]:
    """connection_scope (same `options`) on an engine of its own, disposed at the end."""
    engine = make_engine(url)
    try:
        with connection_scope(engine, **options) as conn:
            yield conn
    finally:
        engine.dispose()


def begin_write(conn: Connection) -> None:
    """Make `conn`'s transaction a write transaction from its first statement. SQLite takes
    its write lock now (BEGIN IMMEDIATE: another writer waits, busy_timeout, instead of slipping
    in between this transaction's checks and its writes, or failing it with "database is
    locked" when it upgrades from reading); PostgreSQL needs nothing, its writes lock the rows
    they touch. Call it before any other statement of the transaction."""
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def dialect_insert(conn: Connection) -> Any:
    """`conn`'s dialect's INSERT, the one with ON CONFLICT (an upsert: one statement)."""
    return postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
