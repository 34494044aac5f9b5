"""`hpsearch run`: local worker processes sharing one study, with a live view from the database.

Workers are separate processes (`python -m hpsearch worker`), each with its share of the CPU
cores, started in their own session so that Ctrl-C reaches only this launcher, which then
passes the stop request (Ctrl-C, SIGTERM or SIGHUP) to each worker exactly once and waits for it
to mark its trial.

A launcher killed outright (SIGKILL, the OOM killer) cannot pass anything on, so on Linux each
worker asks the kernel for a SIGTERM when its parent dies (PR_SET_PDEATHSIG): it then stops as
if the launcher had been stopped. That is chosen over a worker thread watching its parent's pid
because the kernel delivers it at once, costs no polling, and needs nothing in the worker that a
standalone `hpsearch worker` (whose parent is a shell or a scheduler) would have to switch off.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from rich.console import Console
from rich.live import Live
from sqlalchemy import Engine

from hpsearch.cores import gpu_placement, worker_threads
from hpsearch.db.engine import make_engine
from hpsearch.db.errors import DatabaseError
from hpsearch.db.records import StudyProgress
from hpsearch.db.session import connection_scope
from hpsearch.db.summary_queries import read_progress
from hpsearch.paths import study_slug
from hpsearch.search.hours import BudgetKeeper
from hpsearch.search.progress import render_progress, summary_line
from hpsearch.spec import StudyConfig
from hpsearch.stop import check_stop, signal_name, signum_of

# how long stopped workers get to mark their trials. A launcher killed meanwhile (docker stop
# sends SIGKILL after 10 s) leaves them to finish that on their own: they already got the signal
STOP_GRACE_S = 20.0
POLL_S = 1.0
TAIL_LINES = 20  # a dead worker's last lines kept in memory
OUTPUT_DRAIN_S = 5.0  # after a worker exited, how long its last output may take to arrive
# how a worker that was asked to stop exits: 128 + the signal, or killed by it
STOPPED_CODES = {0, *(128 + s for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)),
                 *(-s for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP))}


class WorkerOutput(threading.Thread):
    """Copies a worker's output (stdout and stderr) into its log file and keeps its last
    lines: a log that cannot be written (a full disk) must not cost the line that says why
    the worker died ("worker 0 failed: exit code 1" was all a full log disk left)."""

    def __init__(self, stream: IO[bytes], log_path: Path) -> None:
        super().__init__(name=f"output of {log_path.name}", daemon=True)
        self.stream, self.log_path = stream, log_path
        self.lines: deque[str] = deque(maxlen=TAIL_LINES)
        self.log_error: str | None = None  # why the log could not be written

    def run(self) -> None:
        log: IO[bytes] | None = None
        try:
            log = open(self.log_path, "ab")  # noqa: SIM115 - kept open while the worker runs
        except OSError as exc:
            self.log_error = exc.strerror or str(exc)
        for raw in iter(self.stream.readline, b""):
            line = raw.decode(errors="replace").rstrip()
            if line:
                self.lines.append(line)
            if log is not None:
                try:
                    log.write(raw)
                    log.flush()  # a log read while the run goes on is up to date
                except OSError as exc:
                    self.log_error = exc.strerror or str(exc)
                    log = _closed(log)
        if log is not None:
            _closed(log)

    def last_line(self) -> str | None:
        self.join(timeout=OUTPUT_DRAIN_S)  # the worker has exited: the rest is in the pipe
        last = self.lines[-1] if self.lines else None
        if self.log_error is None:
            return last
        return f"{last or 'no output'} (its log {self.log_path} could not be written: " \
               f"{self.log_error})"


def _closed(log: IO[bytes]) -> None:
    with contextlib.suppress(OSError):  # a full disk fails the final flush too
        log.close()


@dataclass
class WorkerProcess:
    index: int
    process: subprocess.Popen[bytes]
    log_path: Path
    output: WorkerOutput


def spawn(index: int, command: list[str], log_path: Path, env: dict[str, str],
          preexec_fn: Callable[[], None] | None = None) -> WorkerProcess:
    """Start one worker process, its output going to `log_path` through a WorkerOutput."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                               preexec_fn=preexec_fn)
    assert process.stdout is not None
    output = WorkerOutput(process.stdout, log_path)
    output.start()
    return WorkerProcess(index, process, log_path, output)


def start_workers(config: StudyConfig, url: str, workers: int, threads: int | None,
                  device: str, timeout: float | None, log_dir: Path,
                  started: list[WorkerProcess], gpus: Sequence[str] = (),
                  workers_per_gpu: int = 1) -> None:
    """Start the workers, appending each to `started` as soon as it runs, so a stop request
    arriving half-way still reaches those already started. With `gpus`, each worker sees one
    GPU (CUDA_VISIBLE_DEVICES, see gpu_placement) as its cuda device."""
    placement = gpu_placement(workers, gpus, workers_per_gpu)
    per_worker = worker_threads(workers, threads)
    folder = log_dir / study_slug(config.name)
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HPSEARCH_DB": url}  # not on the command line, where ps shows it
    die_with_me = _die_with_parent()
    for index, gpu in enumerate(placement):
        command = [sys.executable, "-m", "hpsearch", "worker", config.name,
                   "--worker-index", str(index), "--threads", str(per_worker),
                   "--device", "cuda" if gpu is not None and device == "auto" else device]
        if timeout:
            command += ["--timeout", str(timeout)]
        log_path = folder / f"worker-{index}.log"
        worker_env = env if gpu is None else {**env, "CUDA_VISIBLE_DEVICES": gpu}
        started.append(spawn(index, command, log_path, worker_env, die_with_me))


PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn that has the kernel send the worker SIGTERM when this launcher dies; None
    where prctl does not exist (not Linux), where only a stopped launcher stops its workers."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # loaded here: the child runs only the prctl call
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the launcher died before prctl: nobody will signal us
            os._exit(1)
    return preexec


def supervise(config: StudyConfig, url: str, workers: list[WorkerProcess],
              console: Console, budget: BudgetKeeper | None = None
              ) -> tuple[StudyProgress, int | None]:
    """Show progress until every worker exits. Returns the last progress and the signal that
    stopped the run (None if it ran to its end). With an hours `budget`, it is re-planned
    (and its limits published to the workers) as the epochs come in."""
    engine = make_engine(url)
    progress = _poll_progress(engine, config.name, StudyProgress())
    stopped_by: int | None = None
    # the file itself, not console.is_terminal: FORCE_COLOR (common in CI) makes rich treat a
    # pipe as a terminal, and a redirected log would fill with redraws
    on_terminal = getattr(console.file, "isatty", lambda: False)()
    view = (LiveView if on_terminal else LogView)(config, console, budget)
    with view:
        view.update(progress)
        try:
            while running := [w for w in workers if w.process.poll() is None]:
                check_stop()  # raised at once as a rule; this catches one that was swallowed
                # wakes as soon as the last worker exits, not up to POLL_S later
                with contextlib.suppress(subprocess.TimeoutExpired):
                    running[0].process.wait(timeout=POLL_S)
                progress = _poll_progress(engine, config.name, progress)
                if budget is not None:  # while the database cannot be read, the last plan
                    # stands (its limits were published; the workers wait for it too)
                    with contextlib.suppress(DatabaseError):
                        budget.update()
                view.update(progress)
        except KeyboardInterrupt as exc:
            stopped_by = signum_of(exc)
            console.print(f"[yellow]{signal_name(stopped_by)}: stopping workers (their running "
                          "trials are marked failed)…[/]")
            stop_workers(workers, stopped_by)
        progress = _poll_progress(engine, config.name, progress)
        view.update(progress)
    engine.dispose()
    return progress, stopped_by


class LiveView:
    """On a terminal: the counts, the best so far and each worker's trial, redrawn in place."""

    def __init__(self, config: StudyConfig, console: Console,
                 budget: BudgetKeeper | None = None) -> None:
        self.config, self.budget = config, budget
        self.live = Live(console=console, refresh_per_second=2, transient=False)

    def __enter__(self) -> LiveView:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.__exit__(None, None, None)

    def update(self, progress: StudyProgress) -> None:
        self.live.update(render_progress(progress, self.config,
                                         self.budget.line() if self.budget else None))


class LogView:
    """Output redirected to a file (`nohup hpsearch run ... > run.log`): a redrawn view would
    only appear at the end, so write one timestamped line each time a trial finishes, and while
    trials run longer, a line of their epochs: for a new epoch at most once per EPOCH_LINE_S,
    and at least once per QUIET_LINE_S (a 60-epoch trial said "finished 0/1" for an hour)."""

    EPOCH_LINE_S = 60.0
    QUIET_LINE_S = 180.0

    def __init__(self, config: StudyConfig, console: Console,
                 budget: BudgetKeeper | None = None) -> None:
        self.config, self.console, self.budget = config, console, budget
        self.last: dict[str, int] | None = None
        self.last_epochs: dict[tuple[str, int], int] = {}
        self.written_at = time.monotonic()

    def __enter__(self) -> LogView:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def update(self, progress: StudyProgress) -> None:
        finished: dict[str, int] = {k: v for k, v in progress.counts.items() if k != "running"}
        if progress.unavailable_since is not None:  # one line per 30 s of an outage
            finished["outage"] = int(time.monotonic() - progress.unavailable_since) // 30
        epochs = {(run.worker, run.number): run.epochs_run for run in progress.running}
        quiet = time.monotonic() - self.written_at
        if finished != self.last:
            self.last = finished
            budget = f"  {self.budget.line()}" if self.budget else ""
            self._write(f"{summary_line(progress, self.config)}{budget}", epochs)
        elif epochs and (quiet >= self.QUIET_LINE_S
                         or (epochs != self.last_epochs and quiet >= self.EPOCH_LINE_S)):
            title = self.config.objectives[0].title
            self._write("running: " + "; ".join(
                f"trial {run.number} epoch {run.epochs_run}/{self.config.max_epochs} {title} "
                + (f"{run.value:.4f}" if run.value is not None else "–")
                for run in progress.running), epochs)

    def _write(self, line: str, epochs: dict[tuple[str, int], int]) -> None:
        self.console.print(f"{time.strftime('%H:%M:%S')} {line}", highlight=False,
                           markup=False, soft_wrap=True)
        self.last_epochs, self.written_at = epochs, time.monotonic()


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


def stop_workers(workers: list[WorkerProcess], signum: int = signal.SIGINT) -> None:
    """Pass the stop request on (the same signal, so each trial's reason names it) and wait for
    the workers to mark their trials; one that does not within STOP_GRACE_S is killed."""
    for worker in workers:
        if worker.process.poll() is None:
            worker.process.send_signal(signum)
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
        if code not in STOPPED_CODES:
            if code < 0:  # killed: its log ends wherever it was
                failures.append((worker, f"killed by {signal.Signals(-code).name}"))
                continue
            failures.append((worker, worker.output.last_line() or f"exit code {code}"))
    return failures
