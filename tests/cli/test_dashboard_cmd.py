"""`hpsearch dashboard`: optuna-dashboard on our database, on loopback, stopped by Ctrl-C."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from hpsearch.search.study import prepare_study
from hpsearch.search.study_file import load_study
from hpsearch.search.worker import run_worker
from tests.conftest import free_port
from tests.helpers import wait_for
from tests.recorded_study import build_recorded_study
from tests.study_files import write_tiny_study

pytest.importorskip("optuna_dashboard", reason="OPTUNA-DASHBOARD IS MISSING: `hpsearch "
                    "dashboard` was NOT tested (pip install 'hpsearch[dashboard]')")


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:  # a loaded CI machine is slow
        return json.load(response)


def test_dashboard_serves_our_studies_and_stops_on_ctrl_c(sqlite_url: str,
                                                          tmp_path: Path) -> None:
    config = load_study(write_tiny_study(tmp_path, "tiny", n_trials=2, epochs=1))
    prepare_study(config, sqlite_url)
    run_worker(config.name, sqlite_url)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "hpsearch", "dashboard", "--db", sqlite_url, "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        # as from a terminal: a job started in the background by a script inherits SIGINT
        # ignored, and Python then never raises KeyboardInterrupt
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: get_json(f"{base}/api/studies") is not None, 60, "the dashboard")
        summaries = get_json(f"{base}/api/studies")["study_summaries"]
        assert [s["study_name"] for s in summaries] == ["tiny"]
        detail = get_json(f"{base}/api/studies/{summaries[0]['study_id']}?after=0")
        assert len(detail["trials"]) == 2
    except BaseException:
        server.kill()  # what the dashboard printed is the first thing to read on a failure
        print("dashboard output:", server.communicate()[0])
        raise
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGINT)
    out, _ = server.communicate(timeout=60)
    assert server.returncode == 0, out
    assert f"on http://127.0.0.1:{port}/" in out and "dashboard stopped (Ctrl-C)" in out
    assert "Traceback" not in out


def test_dashboard_on_a_missing_database_is_one_line_and_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "typo.db"
    result = subprocess.run(
        [sys.executable, "-m", "hpsearch", "dashboard", "--db", f"sqlite:///{missing}",
         "--port", str(free_port())], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and not missing.exists()
    assert result.stderr.startswith("hpsearch: error:") and len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 0), (signal.SIGTERM, 143)])
def test_dashboard_stops_on_a_signal_after_its_output_pipe_closed(
        sqlite_url: str, tmp_path: Path, signum: int, code: int) -> None:
    """Once kept serving for 35 minutes after SIGINT and SIGTERM, its output pipe closed;
    before this fix a closed pipe also turned the stop into exit 1."""
    build_recorded_study(sqlite_url, "s")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "hpsearch", "dashboard", "--db", sqlite_url, "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert server.stdout is not None and server.stderr is not None
        assert b"on http://127.0.0.1" in server.stdout.readline()
        server.stdout.close()  # whoever read its output has gone
        server.stderr.close()
        assert get_json(f"http://127.0.0.1:{port}/api/studies")["study_summaries"]
        server.send_signal(signum)
        assert server.wait(timeout=60) == code
    finally:
        if server.poll() is None:
            server.kill()
