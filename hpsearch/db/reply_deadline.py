"""A bound on how long a PostgreSQL statement waits for its reply.

libpq has none. A server that stops answering on an open connection (a stopped or stuck server
process, a middlebox that keeps the TCP connection alive but swallows the replies) would leave
a worker waiting for ever: TCP keepalives do not notice (the kernel or the middlebox answers
them) and neither does the server's statement_timeout (its reply is what is lost). So each
connection of ours waits for a reply at most the server's statement_timeout plus
REPLY_MARGIN_S: a statement the server itself would have cancelled by then, and whose
cancellation has not arrived either, is not coming back. The connection is then closed, and the
error is an ordinary lost connection: the retry policy waits and a new connection is tried, as
in any outage. A statement_timeout of 0 (the user's `?options=-c statement_timeout=0`) leaves
replies unbounded, as asked.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import psycopg
from psycopg.errors import _WaitTimeout  # the one psycopg raises when a wait's timeout expires
from sqlalchemy import Engine, event

log = logging.getLogger(__name__)
# Beyond the server's statement_timeout: time for its cancellation to reach us on a busy
# server and network. Replies normally take milliseconds.
REPLY_MARGIN_S = 10.0
_UNIT_S = {"ms": 0.001, "": 0.001, "s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_STATEMENT_TIMEOUT = re.compile(
    r"statement_timeout\s*=\s*(\d+(?:\.\d+)?)\s*(ms|s|min|h|d|)(?![\w.])")


def reply_timeout_s(options: str) -> float | None:
    """The reply bound for a session started with libpq `options` (the last statement_timeout
    given wins, as in PostgreSQL); None where it sets none or 0, or in a form not read here."""
    found = _STATEMENT_TIMEOUT.findall(options)
    if not found:
        return None
    amount, unit = found[-1]
    seconds = float(amount) * _UNIT_S[unit]
    return seconds + REPLY_MARGIN_S if seconds > 0 else None


class _BoundedConnection(psycopg.Connection[Any]):
    """A psycopg connection whose waits for the server end after `reply_timeout_s`.

    The bound is per wait: a batch sent at once (psycopg's pipelined executemany) shares one
    bound, where the server's timeout is per statement; hpsearch's batches are single
    statements (SQLAlchemy's insertmanyvalues). Waits with a timeout of their own (psycopg's
    cancellation) keep it; one that asks to wait without end (notifies(timeout=None), not used
    here) is bounded too."""

    reply_timeout_s: float | None = None

    def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
        bound = timeout if timeout is not None else self.reply_timeout_s
        try:
            return super().wait(gen, interval, bound)
        except _WaitTimeout:
            if timeout is not None:  # psycopg's own bound (e.g. waiting for notifications)
                raise
            self.pgconn.finish()  # mid-reply: the connection cannot be used again
            message = (f"no reply from the server within {bound:.0f} s (statement_timeout + "
                       f"{REPLY_MARGIN_S:.0f} s): connection closed")
            log.warning("%s", message)  # said here too: a pool's pre-ping replaces it silently
            raise psycopg.OperationalError(message) from None


def bound_replies(engine: Engine, timeout_s: float | None) -> None:
    """Make every connection `engine` opens wait at most `timeout_s` for a reply."""
    if engine.dialect.name != "postgresql" or engine.dialect.driver != "psycopg" or not timeout_s:
        return

    @event.listens_for(engine, "do_connect")
    def connect(_dialect: Any, _record: Any, cargs: Any, cparams: Any) -> psycopg.Connection[Any]:
        connection = _BoundedConnection.connect(*cargs, **cparams)
        connection.reply_timeout_s = timeout_s
        return connection
