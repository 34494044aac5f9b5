"""A worker's own last line reaches `hpsearch run` whatever happened to its log file."""

from __future__ import annotations

import io
import os
import re
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from hpsearch.db.records import RunningTrial, StudyProgress
from hpsearch.search.launcher import LogView, failed_workers, spawn
from hpsearch.search.study_file import load_study
from tests.study_files import write_tiny_study

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


def test_a_log_gets_a_timestamped_epoch_line_while_a_long_trial_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Output to a file: a new epoch of a running trial is written at most once a minute, and
    something at least every three minutes, so a long trial is seen to progress."""
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    out = io.StringIO()
    config = load_study(write_tiny_study(tmp_path, n_trials=1, epochs=60))
    view = LogView(config, Console(file=out, width=200))

    def at(seconds: float, epoch: int) -> list[str]:
        clock[0] = 1000.0 + seconds
        view.update(StudyProgress(counts={"running": 1}, running=[
            RunningTrial("w0", 0, epoch, 0.5 + epoch / 1000)]))
        lines, _ = out.getvalue().splitlines(), out.truncate(0)
        out.seek(0)
        return lines

    assert len(at(0, 0)) == 1  # the first view: the study's counts
    assert at(30, 1) == []  # a new epoch, but a line was written 30 s ago
    (line,) = at(61, 2)
    assert re.fullmatch(r"\d\d:\d\d:\d\d running: trial 0 epoch 2/60 best val acc 0\.5020",
                        line)
    assert at(200, 2) == []  # nothing new, and not quiet for long
    assert "epoch 2/60" in at(242, 2)[0]  # three minutes without a line: one anyway
