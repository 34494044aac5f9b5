"""`hpsearch run`: local worker processes sharing one study, with a live view from the database.

Workers are separate processes (`python -m hpsearch worker`), each with its share of the CPU
cores, started in their own session so that Ctrl-C reaches only this launcher, which then
interrupts each worker exactly once and waits for it to mark its trial.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.live import Live
from sqlalchemy import Engine

from hpsearch.config import StudyConfig
from hpsearch.cores import available_cores
from hpsearch.db.engine import make_engine
from hpsearch.db.errors import DatabaseError
from hpsearch.db.queries import StudyProgress, read_progress
from hpsearch.db.session import connection_scope
from hpsearch.monitor import render_progress, summary_line
from hpsearch.paths import study_slug

STOP_GRACE_S = 20.0  # how long interrupted workers get to mark their trials
POLL_S = 1.0


@dataclass
class WorkerProcess:
    index: int
    process: subprocess.Popen[bytes]
    log_path: Path


def start_workers(config: StudyConfig, url: str, workers: int, threads: int | None,
                  device: str, timeout: float | None, log_dir: Path) -> list[WorkerProcess]:
    per_worker = threads or max(1, available_cores() // workers)
    folder = log_dir / study_slug(config.name)
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HPSEARCH_DB": url}  # not on the command line, where ps shows it
    started = []
    for index in range(workers):
        command = [sys.executable, "-m", "hpsearch", "worker", config.name,
                   "--worker-index", str(index), "--threads", str(per_worker),
                   "--device", device]
        if timeout:
            command += ["--timeout", str(timeout)]
        log_path = folder / f"worker-{index}.log"
        with open(log_path, "ab") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                       start_new_session=True)
        started.append(WorkerProcess(index, process, log_path))
    return started


def supervise(config: StudyConfig, url: str, workers: list[WorkerProcess],
              console: Console) -> tuple[StudyProgress, bool]:
    """Show progress until every worker exits. Returns the last progress and whether the user
    interrupted."""
    engine = make_engine(url)
    progress = _poll_progress(engine, config.name, StudyProgress())
    interrupted = False
    # the file itself, not console.is_terminal: FORCE_COLOR (common in CI) makes rich treat a
    # pipe as a terminal, and a redirected log would fill with redraws
    on_terminal = getattr(console.file, "isatty", lambda: False)()
    view = LiveView(config, console) if on_terminal else LogView(config, console)
    with view:
        view.update(progress)
        try:
            while running := [w for w in workers if w.process.poll() is None]:
                # wakes as soon as the last worker exits, not up to POLL_S later
                with contextlib.suppress(subprocess.TimeoutExpired):
                    running[0].process.wait(timeout=POLL_S)
                progress = _poll_progress(engine, config.name, progress)
                view.update(progress)
        except KeyboardInterrupt:
            interrupted = True
            console.print("[yellow]Interrupted: stopping workers (their running trials "
                          "are marked failed)…[/]")
            stop_workers(workers)
        progress = _poll_progress(engine, config.name, progress)
        view.update(progress)
    engine.dispose()
    return progress, interrupted


class LiveView:
    """On a terminal: the counts, the best so far and each worker's trial, redrawn in place."""

    def __init__(self, config: StudyConfig, console: Console) -> None:
        self.config = config
        self.live = Live(console=console, refresh_per_second=2, transient=False)

    def __enter__(self) -> LiveView:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.__exit__(None, None, None)

    def update(self, progress: StudyProgress) -> None:
        self.live.update(render_progress(progress, self.config))


class LogView:
    """Output redirected to a file (`nohup hpsearch run ... > run.log`): a redrawn view would
    only appear at the end, so write one timestamped line each time a trial finishes."""

    def __init__(self, config: StudyConfig, console: Console) -> None:
        self.config, self.console = config, console
        self.last: dict[str, int] | None = None

    def __enter__(self) -> LogView:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def update(self, progress: StudyProgress) -> None:
        finished: dict[str, int] = {k: v for k, v in progress.counts.items() if k != "running"}
        if progress.unavailable_since is not None:  # one line per 30 s of an outage
            finished["outage"] = int(time.monotonic() - progress.unavailable_since) // 30
        if finished != self.last:
            self.last = finished
            self.console.print(f"{time.strftime('%H:%M:%S')} "
                               f"{summary_line(progress, self.config)}",
                               highlight=False, markup=False, soft_wrap=True)


def _poll_progress(engine: Engine, name: str, last: StudyProgress) -> StudyProgress:
    """The study's progress; while the database cannot be read (an outage) the last one seen,
    marked with when an outage began: the workers wait for the database, and so does the
    view, saying for how long. (A permanent error ends the workers, who report it.)"""
    try:
        with connection_scope(engine) as conn:
            return read_progress(conn, name)
    except DatabaseError as exc:
        if exc.transient and last.unavailable_since is None:
            last = dataclasses.replace(last, unavailable_since=time.monotonic())
        return last


def stop_workers(workers: list[WorkerProcess]) -> None:
    for worker in workers:
        if worker.process.poll() is None:
            worker.process.send_signal(signal.SIGINT)
    deadline = time.monotonic() + STOP_GRACE_S
    for worker in workers:
        remaining = max(0.1, deadline - time.monotonic())
        try:
            worker.process.wait(timeout=remaining)
        except subprocess.TimeoutExpired:
            worker.process.kill()  # its trial is failed later by the heartbeat check
            worker.process.wait()


def failed_workers(workers: list[WorkerProcess]) -> list[tuple[WorkerProcess, str]]:
    """Workers that exited with an error, with the last line of their log."""
    failures = []
    for worker in workers:
        code = worker.process.returncode
        if code not in (0, 130, -signal.SIGINT):
            if code < 0:  # killed: its log ends wherever it was
                failures.append((worker, f"killed by {signal.Signals(-code).name}"))
                continue
            lines = worker.log_path.read_text(errors="replace").strip().splitlines()
            failures.append((worker, lines[-1] if lines else f"exit code {code}"))
    return failures
