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
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

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


def take_over_stop() -> Stopped | None:
    """The stop under way, for a caller that handles it from here on (and raises it when
    done): a redelivery still pending (see _keeping_stops) is cancelled, so that it does not
    land in the middle of that handling."""
    global _redelivering
    _redelivering = False
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


class StudyHalted(Stopped):
    """A stop asked for through the database (`hpsearch study stop`, a reached target), not by
    a signal: handled like one (the running trial is kept with its checkpoint and queued
    again), but the worker then leaves as one whose work is done (exit 0)."""

    def __init__(self, reason: str) -> None:
        super().__init__(signal.SIGINT)
        self.reason = reason


def interrupted_reason(exc: BaseException) -> str:
    """The reason recorded for a trial stopped by `exc`, e.g. "interrupted (SIGTERM)"."""
    if isinstance(exc, StudyHalted):
        return exc.reason
    return f"interrupted ({signal_name(signum_of(exc))})"


def install_stop_handlers() -> None:
    """Make SIGINT, SIGTERM and SIGHUP raise `Stopped` in the main thread, once: a second
    request while the first is being handled (systemd and Ctrl-C-happy users repeat them) is
    ignored, so the stop that is under way, marking trials, is not cut short by a traceback.

    A signal may land anywhere, also inside library clean-up code, so two more things hold for
    the whole process: no log record carries a stop's traceback (SQLAlchemy logs one when a stop
    lands while it closes a connection), and a stop raised where it cannot propagate (a
    finaliser, a garbage-collector callback) is raised again instead of being lost.

    A signal that is ignored when we start stays ignored: `nohup hpsearch run` must survive
    the terminal closing."""
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, _raise_stop)
    if not getattr(logging.getLogRecordFactory(), "drops_stop_tracebacks", False):
        logging.setLogRecordFactory(_without_stop_traceback(logging.getLogRecordFactory()))
    if not getattr(sys.unraisablehook, "keeps_stops", False):
        sys.unraisablehook = _keeping_stops(sys.unraisablehook)


# Set while a stop swallowed by a finaliser is delivered again: the handler then raises it anew.
_redelivering = False
_in_unraisable_hook = False


def _raise_stop(signum: int, _frame: FrameType | None) -> None:
    global _requested, _requested_at, _redelivering
    if _requested is not None and not _redelivering:
        return
    if _in_unraisable_hook:  # that hook is asking for the stop again already
        return
    if _redelivering and _handling_a_stop():  # it reached its handler another way meanwhile
        _redelivering = False
        return
    _redelivering = False
    if _requested is None:
        _requested, _requested_at = Stopped(signum), time.monotonic()
    # a fresh traceback: the old one holds the frames of the finaliser that swallowed it
    raise _requested.with_traceback(None)


def _handling_a_stop() -> bool:
    """Whether the code this signal interrupted is handling a stop (an `except` block for it,
    or for an error raised while handling it)."""
    exc: BaseException | None = sys.exc_info()[1]
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__context__
    return False


def _redeliver_soon() -> None:
    """Ask again for the stop under way, from another thread, so that the main thread raises
    it once it is back in code that can (the hook that called this has returned by then)."""
    global _redelivering
    _redelivering = True
    signum = _requested.signum if _requested is not None else signal.SIGINT
    main_thread = threading.main_thread().ident or 0

    def ask_again() -> None:
        time.sleep(0.05)
        # A real signal, to the main thread: it also cuts short a sleep or a blocking call.
        signal.pthread_kill(main_thread, signum)

    try:
        threading.Thread(target=ask_again, name="stop-redelivery", daemon=True).start()
    except RuntimeError:  # the interpreter is shutting down: the process ends anyway
        _redelivering = False


def _keeping_stops(hook: Callable[[Any], object]) -> Callable[[Any], object]:
    def unraisable(args: Any) -> None:
        global _in_unraisable_hook
        if not (isinstance(args.exc_value, KeyboardInterrupt) and _requested is not None):
            hook(args)
            return
        # The stop landed in code that cannot raise (Python would print "Exception ignored"
        # and carry on without it): it is asked for again.
        _in_unraisable_hook = True
        try:
            _redeliver_soon()
        finally:
            _in_unraisable_hook = False

    unraisable.keeps_stops = True  # type: ignore[attr-defined]
    return unraisable


def _without_stop_traceback(factory: Callable[..., logging.LogRecord]
                            ) -> Callable[..., logging.LogRecord]:
    """Keeps a line such as "Trial N failed ... because of the following error:
    Stopped('SIGTERM')" that Optuna logs, and drops its traceback: a stop is no crash."""
    def make_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        if record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt):
            record.exc_info = record.exc_text = None  # the text too: masking formats it early
        return record

    make_record.drops_stop_tracebacks = True  # type: ignore[attr-defined]
    return make_record
