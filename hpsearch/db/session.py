"""The one way into the database: a session scope, a connection scope, and the retry policy.

As Optuna's `_create_scoped_session`: commit at the end, roll back on any error, always close;
driver errors leave as one `DatabaseError` (transient or permanent, one line, URL masked).

Retry policy (every write of ours, every call of Optuna's storage, not the heartbeat, which
skips a beat instead): a transient error is retried with exponential back-off (0.2 s doubling
to 5 s) for as long as it lasts, with a log line when the wait starts, every 30 s while it
lasts ("still waiting after N s") and when it ends. There is no overall bound: a worker waits
out an outage of any length and its trial continues where it was. A stop request (Ctrl-C,
SIGTERM, SIGHUP: hpsearch.stop) bounds it: from STOP_WAIT_S after the stop, a transient error
is raised instead of waited out, so a worker stopped during an outage exits within seconds
(its trial is resumed from its checkpoint by the next run). A permanent error is raised at
once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session

from hpsearch.db.errors import as_database_error
from hpsearch.stop import stop_requested_at

log = logging.getLogger(__name__)
T = TypeVar("T")
BACKOFF_FIRST_S = 0.2
BACKOFF_MAX_S = 5.0
REPORT_EVERY_S = 30.0  # how often a long wait says it is still waiting
# A call that took this long was held up (a SQLite lock, a server stalling): it counts as a
# disturbance, like an error (see DatabaseHealth). Normal calls take milliseconds.
SLOW_CALL_S = 2.0
# After a stop request, how long database calls still wait out an outage (marking the stopped
# trial, queuing its retry); then they give up and the stop goes on without them.
STOP_WAIT_S = 10.0


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


def begin_write(conn: Connection) -> None:
    """Make `conn`'s transaction a write transaction from its first statement. SQLite takes
    its write lock now (BEGIN IMMEDIATE: another writer waits, busy_timeout, instead of slipping
    in between this transaction's checks and its writes, or failing it with "database is
    locked" when it upgrades from reading); PostgreSQL needs nothing, its writes lock the rows
    they touch. Call it before any other statement of the transaction."""
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")


class DatabaseHealth:
    """When this process last saw the database disturbed (an error, or a call held up).

    A worker fails another worker's trial as stale only after its own database access has
    been steady for a whole grace period: an outage stops *every* worker's heartbeats, and the
    live ones need one interval after it to beat again.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._disturbed_at = float("-inf")

    def disturbed(self) -> None:
        with self._lock:
            self._disturbed_at = time.monotonic()

    def observe(self, started: float) -> None:
        """A call that began at `started` (monotonic) has just returned."""
        if time.monotonic() - started > SLOW_CALL_S:
            self.disturbed()

    def steady_for(self) -> float:
        with self._lock:
            return time.monotonic() - self._disturbed_at


health = DatabaseHealth()


def heartbeat_lock_wait(engine: Engine) -> float:
    """Seconds spent taking, and at once giving back, the lock that writing a heartbeat to
    Optuna's `trial_heartbeats` needs (SQLite: the write lock; PostgreSQL: the table lock)."""
    started = time.monotonic()
    with engine.connect() as conn:
        begin_write(conn)
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql("LOCK TABLE trial_heartbeats IN ROW EXCLUSIVE MODE")
        conn.rollback()
    return time.monotonic() - started


def retrying(action: Callable[[], T], what: str, *, url: str | None = None) -> T:
    """Run `action`, waiting out transient database errors (the module's retry policy).

    Permanent errors are raised at once as DatabaseError (naming `url`, masked); so are
    transient ones from STOP_WAIT_S after a stop request.
    """
    waiting_since: float | None = None
    reported = 0.0
    delay = BACKOFF_FIRST_S
    while True:
        started = time.monotonic()
        try:
            result = action()
        except Exception as exc:
            error = as_database_error(exc, url)
            if error is None:
                raise
            if not error.transient:
                raise error from exc
            health.disturbed()
            now = time.monotonic()
            if waiting_since is None:
                waiting_since = reported = now
                log.warning("%s failed (%s); retrying with back-off until the database is back",
                            what, error.reason)
            elif now - reported >= REPORT_EVERY_S:
                reported = now
                log.warning("%s: database unavailable, still waiting after %.0f s (%s)",
                            what, now - waiting_since, error.reason)
            pause = delay
            stopping_since = stop_requested_at()
            if stopping_since is not None:
                left = stopping_since + STOP_WAIT_S - now
                if left <= 0:
                    log.warning("%s: giving up after %.0f s: stopping", what,
                                now - waiting_since)
                    raise error from exc
                pause = min(pause, left)  # try once more at the bound, not a back-off later
            time.sleep(pause)
            delay = min(delay * 2, BACKOFF_MAX_S)
            continue
        health.observe(started)
        if waiting_since is not None:
            log.warning("%s: database back after %.0f s", what, time.monotonic() - waiting_since)
        return result
