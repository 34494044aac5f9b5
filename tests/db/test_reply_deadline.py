"""A PostgreSQL server that stops answering on an open connection ends a statement within the
reply bound, as a lost connection that the retry policy waits out, instead of for ever."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy.engine import make_url

from hpsearch.db import reply_deadline
from hpsearch.db.engine import PG_SESSION_SETTINGS, make_engine
from hpsearch.db.errors import as_database_error
from hpsearch.db.reply_deadline import REPLY_MARGIN_S, reply_timeout_s
from tests.conftest import PostgresServer
from tests.net_faults import CuttableProxy


def test_the_bound_is_the_servers_statement_timeout_plus_a_margin() -> None:
    default = PG_SESSION_SETTINGS["statement_timeout"] / 1000
    assert reply_timeout_s(f"-c statement_timeout={default * 1000:.0f}") == default + REPLY_MARGIN_S
    assert reply_timeout_s("-c statement_timeout=2s") == 2 + REPLY_MARGIN_S
    assert reply_timeout_s("-c statement_timeout=1min") == 60 + REPLY_MARGIN_S
    assert reply_timeout_s("-c statement_timeout=1.5min") == 90 + REPLY_MARGIN_S
    assert reply_timeout_s("-c statement_timeout=0.5h") == 1800 + REPLY_MARGIN_S
    # the last one given wins, as in PostgreSQL; 0 (no server bound) means no bound here either
    assert reply_timeout_s("-c statement_timeout=0 -c statement_timeout=500ms") == \
        0.5 + REPLY_MARGIN_S
    assert reply_timeout_s("-c statement_timeout=0") is None
    assert reply_timeout_s("-c search_path=x") is None
    assert reply_timeout_s("-c statement_timeout=5years") is None  # not read: not guessed


def _outcome(action: object, limit: float) -> tuple[float, BaseException | None] | None:
    """(seconds taken, what it raised) for `action()` run in a thread; None if it was still
    waiting after `limit` seconds."""
    result: list[tuple[float, BaseException | None]] = []

    def run() -> None:
        started = time.monotonic()
        try:
            action()  # type: ignore[operator]
            result.append((time.monotonic() - started, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            result.append((time.monotonic() - started, exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit)
    return result[0] if result else None


def test_a_statement_on_a_connection_gone_silent_ends_as_a_transient_error(
        pg_url: str, postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reply_deadline, "REPLY_MARGIN_S", 1.0)
    proxy = CuttableProxy(postgres_server.port)
    url = make_url(pg_url).set(port=proxy.port).update_query_dict(
        {"options": "-c statement_timeout=1000"}).render_as_string(hide_password=False)
    engine = make_engine(url)  # reply bound: 1 s + 1 s
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT 1").scalar_one() == 1
            proxy.mute()  # the server's replies on this connection are lost from now on
            outcome = _outcome(lambda: conn.exec_driver_sql("SELECT 2").scalar_one(), 30)
        assert outcome is not None, "still waiting for a reply after 30 s"
        took, raised = outcome
        assert 1.5 < took < 10, took
        error = as_database_error(raised) if raised is not None else None
        assert error is not None and error.transient, raised
        assert "no reply from the server within 2 s" in str(error)
        with engine.connect() as conn:  # the next connection is a fresh one, and answered
            assert conn.exec_driver_sql("SELECT 3").scalar_one() == 3
    finally:
        engine.dispose()
        proxy.close()
