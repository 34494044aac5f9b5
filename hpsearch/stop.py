"""Stop requests: Ctrl-C (SIGINT), SIGTERM (`kill`, `docker stop`, `systemctl stop`) and SIGHUP
(the terminal closed) all stop `hpsearch run` and `hpsearch worker` the same way.

Each becomes a `Stopped` exception, a KeyboardInterrupt, so every place that already handles
Ctrl-C (Optuna fails the trial and re-raises it, our objective records the reason) handles the
others too. The exit code is the shell's convention for death by that signal: 128 + its number.
No torch here: the launcher installs the handlers before its workers start.
"""

from __future__ import annotations

import logging
import signal
import time
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Stopped(KeyboardInterrupt):
    """A stop request; `signum` names the signal that asked for it."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal_name(signum))
        self.signum = signum


# The stop under way in this process, and when it was asked for (monotonic): the database's
# retry policy stops waiting out an outage soon after it (hpsearch.db.session), and a failure
# met while stopping is reported as the stop it is part of (hpsearch.search.worker).
_requested: Stopped | None = None
_requested_at: float | None = None


def stop_requested() -> Stopped | None:
    return _requested


def stop_requested_at() -> float | None:
    return _requested_at


def signal_name(signum: int) -> str:
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


def signum_of(exc: BaseException) -> int:
    """The signal behind a KeyboardInterrupt: a plain one is Ctrl-C."""
    return getattr(exc, "signum", signal.SIGINT)


def exit_code(signum: int) -> int:
    return 128 + signum


def interrupted_reason(exc: BaseException) -> str:
    """The reason recorded for a trial stopped by `exc`, e.g. "interrupted (SIGTERM)"."""
    return f"interrupted ({signal_name(signum_of(exc))})"


def install_stop_handlers() -> None:
    """Make SIGINT, SIGTERM and SIGHUP raise `Stopped` in the main thread, once: a second
    request while the first is being handled (systemd and Ctrl-C-happy users repeat them) is
    ignored, so the stop that is under way, marking trials, is not cut short by a traceback.

    A signal that is ignored when we start stays ignored: `nohup hpsearch run` must survive
    the terminal closing."""
    stopping = False

    def handler(signum: int, _frame: FrameType | None) -> None:
        global _requested, _requested_at
        nonlocal stopping
        if stopping:
            return
        stopping = True
        _requested, _requested_at = Stopped(signum), time.monotonic()
        raise _requested

    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, handler)


class _NoStopTraceback(logging.Filter):
    """Keeps the line "Trial N failed ... because of the following error: Stopped('SIGTERM')"
    that Optuna logs for an interrupted trial, and drops its traceback: a stop is no crash."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt):
            record.exc_info = record.exc_text = None  # the text too: it may be formatted already
        return True


def quiet_stop_tracebacks(logger: logging.Logger) -> None:
    """Apply to every handler of `logger` (Optuna logs through its root logger's handler)."""
    for handler in logger.handlers:
        handler.addFilter(_NoStopTraceback())
