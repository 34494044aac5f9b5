"""A stop signal may land anywhere, also inside library clean-up code: it must neither print a
traceback there nor be lost there. Each case runs in its own process with real signals."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.system.test_reliability import ROOT

PRELUDE = """
import logging, os, signal, time
from hpsearch.cli import _mask_secrets_everywhere
from hpsearch.stop import install_stop_handlers
_mask_secrets_everywhere()  # as the CLI's main() does, before a command installs the handlers
install_stop_handlers()
logging.basicConfig(format="%(levelname)s %(message)s")
"""


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(code)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_a_library_logging_the_stop_it_was_cut_by_prints_its_line_without_a_traceback() -> None:
    # What SQLAlchemy's pool does when a stop lands while it closes a connection.
    done = run_python("""
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)
        except BaseException:
            logging.getLogger("sqlalchemy.pool").error("Exception closing connection",
                                                       exc_info=True)
            raise SystemExit(3)
    """)
    assert done.returncode == 3, done.stderr
    assert "ERROR Exception closing connection" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_stop_landing_in_a_finaliser_is_raised_again_not_lost() -> None:
    done = run_python("""
        class ClosesOnDelete:
            def __del__(self):
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(100_000):  # the signal's handler runs here, in the finaliser
                    pass

        started = time.monotonic()
        try:
            ClosesOnDelete()
            time.sleep(10)  # a blocking call: the stop asked for again must cut it short
            print("stop lost")
        except KeyboardInterrupt as exc:
            print(f"stopped by {exc} after {time.monotonic() - started:.2f} s")
    """)
    assert done.stdout.startswith("stopped by SIGTERM after "), done.stdout + done.stderr
    took = float(done.stdout.split()[-2])
    assert took < 5  # not the 10 s sleep: the blocking call was cut short
    assert "Exception ignored" not in done.stderr
    assert "Traceback" not in done.stderr


def test_code_that_takes_over_a_swallowed_stop_is_not_cut_short_by_its_redelivery() -> None:
    done = run_python("""
        from hpsearch.stop import take_over_stop

        class ClosesOnDelete:
            def __del__(self):
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(100_000):
                    pass

        ClosesOnDelete()  # the stop is swallowed here; its redelivery is on its way
        stop = take_over_stop()  # e.g. the worker settling a trial failed by the stop
        time.sleep(0.5)  # that handling: a redelivery would land here
        print(f"handled {stop}")
    """)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "handled SIGTERM"


def test_a_second_stop_request_is_ignored_while_the_first_is_handled() -> None:
    done = run_python("""
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)
        except KeyboardInterrupt:
            os.kill(os.getpid(), signal.SIGINT)  # e.g. a Ctrl-C after `docker stop`
            time.sleep(0.5)
            print("handled")
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "handled"
