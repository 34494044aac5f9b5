"""The run command's progress output: redrawn on a terminal, one line per change in a log."""

from __future__ import annotations

import io
import re
from pathlib import Path

from rich.console import Console

from hpsearch.db.records import RunningTrial, StudyProgress
from hpsearch.search.launcher import LiveView, LogView
from hpsearch.search.study_file import StudyConfig, load_study
from tests.study_files import write_tiny_study


def tiny_config(folder: Path) -> StudyConfig:
    return load_study(write_tiny_study(folder, n_trials=3))


def progress(complete: int, running: int, best: float | None) -> StudyProgress:
    return StudyProgress(
        counts={"complete": complete, "running": running}, best_value=best,
        best_number=0 if best is not None else None,
        running=[RunningTrial(f"host:{pid}", complete + pid, 1, None, "fp32", "cpu")
                 for pid in range(running)])


def test_log_view_writes_one_line_per_finished_trial_and_never_wraps(tmp_path: Path) -> None:
    config = tiny_config(tmp_path)
    out = io.StringIO()
    console = Console(file=out, width=40)  # narrower than the line: it must not wrap
    with LogView(config, console) as view:
        view.update(progress(0, 2, None))
        view.update(progress(0, 2, None))  # nothing finished: no new line
        view.update(progress(1, 2, 0.75))
        view.update(progress(1, 1, 0.75))  # a worker went idle, same counts: no new line
        view.update(progress(3, 0, 0.8))
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert re.fullmatch(r"\d\d:\d\d:\d\d finished 0/3 .* best val acc –", lines[0])
    assert lines[2].endswith("finished 3/3  (complete 3, pruned 0, failed 0)  "
                             "best val acc 0.8000 (trial 0)")


def test_live_view_shows_each_running_trial(tmp_path: Path) -> None:
    config = tiny_config(tmp_path)
    out = io.StringIO()
    console = Console(file=out, width=120, force_terminal=True)
    with LiveView(config, console) as view:
        view.update(progress(1, 2, 0.75))
    text = out.getvalue()
    assert "finished 1/3" in text and "best val acc 0.7500 (trial 0)" in text
    assert "host:0" in text and "host:1" in text
    assert "cpu fp32" in text  # the precision each trial really runs with
