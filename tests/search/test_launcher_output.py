"""A worker's own last line reaches `hpsearch run` whatever happened to its log file."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from hpsearch.search.launcher import failed_workers, spawn

DIES = [sys.executable, "-c", "import sys; print('training...'); "
        "sys.stderr.write('hpsearch: error: the real reason\\n'); sys.exit(1)"]


def test_a_dead_workers_last_line_is_given_and_its_log_kept(tmp_path: Path) -> None:
    log = tmp_path / "worker-0.log"
    worker = spawn(0, DIES, log, dict(os.environ))
    worker.process.wait(timeout=60)
    assert failed_workers([worker]) == [(worker, "hpsearch: error: the real reason")]
    assert log.read_text().splitlines() == ["training...", "hpsearch: error: the real reason"]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full")
def test_a_log_on_a_full_disk_does_not_cost_the_reason(tmp_path: Path) -> None:
    """A full log disk gave `worker 0 failed: exit code 1` and nothing else."""
    log = tmp_path / "worker-0.log"
    log.symlink_to("/dev/full")  # every write: No space left on device
    worker = spawn(0, DIES, log, dict(os.environ))
    worker.process.wait(timeout=60)
    [(_, line)] = failed_workers([worker])
    assert line == (f"hpsearch: error: the real reason (its log {log} could not be written: "
                    "No space left on device)")
