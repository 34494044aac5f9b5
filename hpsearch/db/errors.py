"""One classification of database errors: transient (waiting heals it: a worker waits for them
between trials, `hpsearch.search.worker`) or permanent (reported at once); the codes below."""

from __future__ import annotations

import os
import sqlite3

from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from hpsearch.db.engine import mask_url
from hpsearch.errors import HpsearchError
from hpsearch.masking import mask_secrets, one_line

# SQLite primary result codes that waiting heals: BUSY, LOCKED (another connection holds the
# lock), NOMEM, INTERRUPT, FULL (freeing disk space heals it), PROTOCOL (a WAL lock race).
# Everything else (READONLY, CORRUPT, NOTADB, CANTOPEN, "no such table", IOERR...) is permanent.
_SQLITE_TRANSIENT = {5, 6, 7, 9, 13, 15}
_SQLITE_IOERR = 10  # transient only on a full disk (see _sqlite_disk_full)
DISK_FULL_BYTES = 64 * 2**20  # less free space than this counts as a full disk
# PostgreSQL SQLSTATE classes/codes that waiting heals: connection exceptions (08), the server
# shutting down or starting (57P01-57P03), insufficient resources (53: disk full, out of memory,
# too many connections), serialisation failures and deadlocks (40001, 40P01), a lock not
# available (55P03), a statement cancelled by statement_timeout (57014), and a session the
# server ended for sitting idle in a transaction or idle (25P03, 57P05: a new one works).
_PG_TRANSIENT_CLASSES = ("08", "53")
_PG_TRANSIENT_CODES = {"57P01", "57P02", "57P03", "40001", "40P01", "55P03", "57014",
                       "25P03", "57P05"}
# A connection refused by the server itself (no SQLSTATE at connect time): bad credentials, a
# database or role that does not exist. Anything else failing to connect (refused, reset,
# timed out, unknown host) is taken as an outage.
_PG_PERMANENT_CONNECT = ("authentication failed", "does not exist", "no pg_hba.conf entry",
                         "invalid connection option", "invalid dsn", "invalid integer value",
                         "invalid sslmode", "is not a valid", "permission denied")


class DatabaseError(HpsearchError):
    """A database error as the user sees it: one line, the URL masked; `transient`: waiting
    can heal it."""

    def __init__(self, reason: str, *, transient: bool, url: str | None = None) -> None:
        self.reason = reason
        self.transient = transient
        self.masked_url = mask_url(url) if url else None
        where = (f"cannot use database {self.masked_url}: " if self.masked_url
                 else "database error: ")
        super().__init__(where + reason)


class DuplicateRowError(DatabaseError):
    """A unique key clash (IntegrityError): another process wrote the same row first."""


def as_database_error(exc: BaseException, url: str | None = None) -> DatabaseError | None:
    """`exc` as a DatabaseError; None when no database error is behind it.

    Follows the chain of causes (Optuna wraps SQLAlchemy's errors in its StorageInternalError)
    and contexts: Optuna's bookkeeping after a trial, failing on the same database, can raise
    an unrelated error (an UnboundLocalError) while handling the database's.
    """
    cause: BaseException | None = exc
    seen: set[int] = set()
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, DatabaseError):
            return cause
        if isinstance(cause, SQLAlchemyError):
            return _from_sqlalchemy(cause, url)
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


def _from_sqlalchemy(exc: SQLAlchemyError, url: str | None) -> DatabaseError:
    if isinstance(exc, DBAPIError):
        reason = _one_line(str(exc.orig or exc), url)
        if isinstance(exc, IntegrityError):
            return DuplicateRowError(reason, transient=False, url=url)
        full = _sqlite_disk_full(exc, url)
        if full is not None:
            return DatabaseError(f"{reason} (no space left in {full})", transient=True, url=url)
        return DatabaseError(reason, transient=is_transient(exc), url=url)
    # not from the driver: a pool checkout that timed out waits; SQLAlchemy misuse does not
    return DatabaseError(_one_line(str(exc), url), transient=isinstance(exc, PoolTimeoutError),
                         url=url)


def is_transient(exc: DBAPIError) -> bool:
    if exc.connection_invalidated:  # the connection died under us; a new one may work
        return True
    orig = exc.orig
    if isinstance(orig, sqlite3.Error):
        code = getattr(orig, "sqlite_errorcode", None)
        if code is None:  # only "database is locked" is worth waiting for without a code
            return "locked" in str(orig)
        return code & 0xFF in _SQLITE_TRANSIENT  # extended codes carry the primary in 8 bits
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate:
        return sqlstate[:2] in _PG_TRANSIENT_CLASSES or sqlstate in _PG_TRANSIENT_CODES
    message = str(orig).lower()
    return not any(marker in message for marker in _PG_PERMANENT_CONNECT)


def _sqlite_disk_full(exc: DBAPIError, url: str | None) -> str | None:
    """The folder of a SQLite database whose disk is full, when that is behind `exc`.

    SQLite reports ENOSPC as SQLITE_FULL on most writes but as a plain "disk I/O error" on
    others (growing the WAL index, for one); an I/O error on a full disk is waited out like
    SQLITE_FULL, any other I/O error is permanent.
    """
    orig = exc.orig
    if not (isinstance(orig, sqlite3.Error) and url
            and (getattr(orig, "sqlite_errorcode", 0) or 0) & 0xFF == _SQLITE_IOERR):
        return None
    try:
        database = make_url(url).database
        folder = os.path.dirname(os.path.abspath(database or "."))
        stats = os.statvfs(folder)
    except (OSError, ValueError):
        return None
    return folder if stats.f_bavail * stats.f_frsize < DISK_FULL_BYTES else None


def _one_line(message: str, url: str | None) -> str:
    """The driver's message on one line, with the password scrubbed should it echo it."""
    line = one_line(message).split(" (Background on this error at:")[0]  # a link adds nothing
    return mask_secrets(line, *([url] if url else []))
