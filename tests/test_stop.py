"""A stop request is a flag: a worker's safe points (between batches, between trials, any wait)
raise it; a process without safe points has it raised at once. Real signals, each case in its
own process."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRELUDE = """
import os, signal, time
from hpsearch import stop
"""


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(code)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_a_worker_sees_the_stop_at_its_next_safe_point_and_a_wait_ends_at_once() -> None:
    done = run_python("""
        stop.install_stop_handlers(raise_at_once=False)
        os.kill(os.getpid(), signal.SIGTERM)
        print("not raised where it landed")  # e.g. inside a database call
        started = time.monotonic()
        try:
            stop.wait(30)  # an idle worker's poll, a dry-run epoch, a wait for the database
        except KeyboardInterrupt as exc:
            print(f"stopped by {exc} at once: {time.monotonic() - started < 5}")
        try:
            stop.check_stop()  # the epoch loop's check between batches
        except KeyboardInterrupt as exc:
            print(f"and again at the next check: {stop.interrupted_reason(exc)}")
    """)
    lines = done.stdout.splitlines()
    assert lines[0] == "not raised where it landed", done.stdout + done.stderr
    assert lines[1] == "stopped by SIGTERM at once: True"
    assert lines[2] == "and again at the next check: interrupted (SIGTERM)"


def test_without_safe_points_the_stop_is_raised_at_once() -> None:
    done = run_python("""
        stop.install_stop_handlers()
        started = time.monotonic()
        try:
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(30)
        except KeyboardInterrupt as exc:
            print(f"{exc} {stop.exit_code(stop.signum_of(exc))} {time.monotonic() - started < 5}")
    """)
    assert done.stdout.strip() == "SIGHUP 129 True", done.stdout + done.stderr


def test_a_second_stop_request_is_ignored_while_the_first_is_handled() -> None:
    done = run_python("""
        stop.install_stop_handlers()
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)
        except KeyboardInterrupt:
            os.kill(os.getpid(), signal.SIGINT)  # e.g. a Ctrl-C after `docker stop`
            time.sleep(0.5)
            print("handled", stop.stop_requested())
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "handled SIGTERM"


def test_an_ignored_signal_stays_ignored() -> None:
    """`nohup hpsearch run` must survive the terminal closing."""
    done = run_python("""
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        stop.install_stop_handlers()
        os.kill(os.getpid(), signal.SIGHUP)
        time.sleep(0.2)
        print("alive", stop.stop_requested())
    """)
    assert done.stdout.strip() == "alive None", done.stdout + done.stderr
