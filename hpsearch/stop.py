"""Stop requests: Ctrl-C (SIGINT), SIGTERM (`kill`, `docker stop`, `systemctl stop`) and SIGHUP
(the terminal closed) all stop `hpsearch run` and `hpsearch worker` the same way.

A stop is a flag. A worker checks it where stopping is safe: the epoch loop between batches,
the worker between trials, and every wait (`wait`); there it raises `Stopped`, a
KeyboardInterrupt, so every place that handles Ctrl-C (Optuna fails the trial, our objective
records the reason) handles the others too. Code with no such checks (the launcher's view, the
dashboard) asks for `Stopped` to be raised at once, wherever its main thread is. The exit code
is the shell's convention for death by that signal: 128 + its number.
No torch here: the launcher installs the handlers before its workers start.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Stopped(KeyboardInterrupt):
    """A stop request; `signum` names the signal that asked for it."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal_name(signum))
        self.signum = signum


_requested: Stopped | None = None
_event = threading.Event()  # set with _requested: wakes every wait at once
_raise_at_once = True


def stop_requested() -> Stopped | None:
    return _requested


def check_stop() -> None:
    """Raise the stop asked for, if any: called where stopping is safe."""
    if _requested is not None:
        raise _requested.with_traceback(None)


def wait(seconds: float) -> None:
    """Sleep `seconds`; a stop request ends the sleep at once with `Stopped`."""
    _event.wait(seconds)
    check_stop()


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


def install_stop_handlers(*, raise_at_once: bool = True) -> None:
    """Make SIGINT, SIGTERM and SIGHUP request a stop. `raise_at_once`: also raise `Stopped`
    in the main thread wherever it is (a process with no safe points of its own); otherwise
    the stop waits for the next `check_stop` or `wait`. A second request while the first is
    under way is ignored (systemd and Ctrl-C-happy users repeat them).

    A signal that is ignored when we start stays ignored: `nohup hpsearch run` must survive
    the terminal closing."""
    global _raise_at_once
    _raise_at_once = raise_at_once
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, _request_stop)


def _request_stop(signum: int, _frame: FrameType | None) -> None:
    global _requested
    if _requested is not None:
        return
    _requested = Stopped(signum)
    _event.set()
    if _raise_at_once:
        raise _requested
