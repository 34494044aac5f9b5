"""A lock per study, held from "is there room for one more trial?" until Optuna has made it.

Without it, two workers that both see 9 of 10 trials started both ask Optuna for a trial, and
the later one's becomes a surplus: a trial in Optuna's table (failed, or worse, run) that
optuna-dashboard and `optuna trials` count. Deleting the surplus afterwards would still leave a
window in which the dashboard shows it and a gap in the trial numbers; MaxTrialsCallback only
stops a worker after its trial ends. So the count and the ask happen under one lock, and the
race cannot happen at all. The heartbeat check holds it too, from failing a dead trial to
queueing its retry: a count between the two would see neither and start a new trial in the
retry's place.

Why not SQLite's write lock: Optuna creates the trial on its own connection, which a
transaction of ours holding that lock would block for good. So on SQLite the lock is an flock()
on a file next to the database (released by the kernel if the worker dies; a SQLite file is
only ever shared by processes of one machine). On PostgreSQL it is a transaction-scoped
advisory lock on a connection of its own, held by leaving that transaction open: released when
the transaction ends, and, should the worker be cut off from the server (a partition, a dead
machine), when the server ends the half-open session for sitting idle in a transaction
(`idle_in_transaction_session_timeout`, hpsearch.db.engine.PG_SESSION_SETTINGS). A
session-level lock would outlive a cut-off worker until the server noticed the dead peer
(hours), and every worker of the study would wait for it. Losing the lock early (a holder that
waits longer than that timeout) is harmless once Optuna has created the trial, which it does
before sampling.

A holder that never lets go (SIGSTOP, a paused VM) would block every worker of the study for
good on SQLite: there a worker waits for the flock at most `wait_s` (the study's grace period,
after which the heartbeat check counts a silent worker as dead) and then goes on without it,
at the risk of the surplus trial above rather than a study that waits for ever.
"""

from __future__ import annotations

import fcntl
import logging
import threading
import time
from pathlib import Path
from typing import IO

import tenacity
from sqlalchemy import Connection, Engine, func, select
from sqlalchemy.engine import make_url

from hpsearch.db.engine import make_engine
from hpsearch.db.errors import as_database_error
from hpsearch.stop import wait

log = logging.getLogger(__name__)

# First key of PostgreSQL's two-key advisory lock: "hps" + 1; the second is the study's id.
_PG_NAMESPACE = 0x687073_01


class TrialSlotLock:
    """A cross-process mutex for one Optuna study; release() may be called more than once."""

    def __init__(self, url: str, optuna_study_id: int, engine: Engine | None = None,
                 wait_s: float | None = None) -> None:
        """`engine`: the worker's engine to take the lock's connection from (PostgreSQL);
        by default one of its own. `wait_s`: the longest wait for another holder's flock
        (SQLite; None: no limit)."""
        self.url = url
        self.study_id = optuna_study_id
        self.wait_s = wait_s
        parsed = make_url(url)
        self._pg = parsed.get_backend_name() == "postgresql"
        self._file = None if self._pg else Path(f"{parsed.database}.trial-lock")
        self._owns_engine = engine is None
        self._engine = (engine or make_engine(url)) if self._pg else None
        self._conn: Connection | None = None
        self._handle: IO[bytes] | None = None

    def acquire(self) -> None:
        if self._engine is not None:
            self._lock()
        elif self._file is not None:
            handle = open(self._file, "ab")  # noqa: SIM115 - held until release()
            try:
                taken = self._flock(handle)
            except BaseException:  # a stop ended the wait
                handle.close()
                raise
            if taken:
                self._handle = handle
            else:
                handle.close()
                log.warning("another worker has held the trial-slot lock for over %g s (frozen?);"
                            " going on without it", self.wait_s)

    def _flock(self, handle: IO[bytes]) -> bool:
        """Take the flock; False if another process held it for all of `wait_s`."""
        if self.wait_s is None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            return True
        # a stop request ends the main thread's wait (stop.wait raises); the heartbeat
        # check's thread just waits: it ends with the process
        main = threading.current_thread() is threading.main_thread()
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(BlockingIOError), reraise=True,
            stop=tenacity.stop_after_delay(self.wait_s), wait=tenacity.wait_fixed(0.05),
            sleep=wait if main else time.sleep)
        try:
            retrying(fcntl.flock, handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _lock(self) -> None:
        assert self._engine is not None
        conn = self._engine.connect()
        try:
            # the transaction this begins stays open until release(): it holds the lock
            conn.execute(select(func.pg_advisory_xact_lock(_PG_NAMESPACE, self.study_id)))
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def release(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                conn.rollback()  # ends the transaction, and the lock with it
            except Exception as exc:  # a lost session took its lock with it
                error = as_database_error(exc, self.url)
                log.warning("trial-slot lock not released (%s); the server drops it with "
                            "the session", error.reason if error else exc)
            finally:
                conn.close()
        if self._handle is not None:
            handle, self._handle = self._handle, None
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            handle.close()

    def close(self) -> None:
        self.release()
        if self._engine is not None and self._owns_engine:
            self._engine.dispose()

