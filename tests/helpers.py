"""Small helpers shared by the test modules."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hpsearch.cli import main
from hpsearch.db.engine import make_engine
from hpsearch.db.models import Epoch, Study, Trial
from hpsearch.search.study import prepare_study
from hpsearch.search.study_file import load_study
from hpsearch.search.worker import run_worker
from tests.study_files import write_tiny_study

if TYPE_CHECKING:
    import torch


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `condition` until it holds; errors count as "not yet" (the schema may not exist)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except Exception:  # e.g. tables not created yet
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def hps(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        *args: str) -> tuple[int, str, str]:
    """Run `hpsearch ARGS` in this process through the real entry point: (exit code, out, err)."""
    monkeypatch.setenv("COLUMNS", "250")  # rich tables: no wrapping in captured output
    monkeypatch.setattr(sys, "argv", ["hpsearch", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    out, err = capsys.readouterr()
    code = exit_info.value.code
    return (code if isinstance(code, int) else 0 if code is None else 1), out, err


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hpsearch: error: "), err
    assert "Traceback" not in err
    return lines[0]


def assert_nothing_lost(url: str, name: str, n_trials: int, epochs: int) -> None:
    """The user's promise after faults: n_trials complete, each with every epoch exactly once;
    every trial a fault ended was resumed by a retry that carried its recorded epochs over
    unchanged, all but the last at most (recorded, not yet checkpointed: one epoch per fault
    is recomputed, never more); Optuna agrees (nothing left running or queued)."""
    engine = make_engine(url)
    with Session(engine) as session:
        study_id = session.scalar(select(Study.id).where(Study.name == name))
        trials = list(session.scalars(select(Trial).where(Trial.study_id == study_id)))
        counts = session.execute(select(Epoch.trial_id, Epoch.epoch, func.count())
                                 .group_by(Epoch.trial_id, Epoch.epoch)).all()
        seconds = {t.id: [e.seconds for e in session.scalars(
            select(Epoch).where(Epoch.trial_id == t.id).order_by(Epoch.epoch))] for t in trials}
    engine.dispose()
    summary = [(t.number, t.state, t.reason, t.retried_from, t.epochs_run) for t in trials]
    told = {t._trial_id: t.state for t in optuna.load_study(study_name=name, storage=url).trials}
    # a trial whose end we recorded while its tell to Optuna was held up can be failed there by
    # the heartbeat check and run again (docs/RELIABILITY.md, known problems): it counts once
    complete = [t for t in trials if t.state == "complete"
                and told[t.optuna_trial_id] == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == n_trials and len(
        [t for t in trials if t.state in ("complete", "failed")]) == len(trials), summary
    assert all(count == 1 for _, _, count in counts)
    for trial in complete:
        assert sorted(e for t, e, _ in counts if t == trial.id) == list(range(1, epochs + 1))
    for dead in [t for t in trials if t.state == "failed"]:
        (retry,) = [t for t in trials if t.retried_from == dead.number]
        kept = max(len(seconds[dead.id]) - 1, 0)
        assert seconds[retry.id][:kept] == seconds[dead.id][:kept], summary
    states = [t.state for t in optuna.load_study(study_name=name, storage=url).trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == n_trials, states
    assert set(states) <= {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL}


ROOT = Path(__file__).resolve().parents[1]
NO_NETWORK = "http://127.0.0.1:1"  # refused at once: a download attempt fails in milliseconds


def clean_env(tmp: Path) -> dict[str, str]:
    """No HPSEARCH_* settings from the caller, a private cache, and no network: downloads
    are refused by a proxy that does not exist."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("HPSEARCH_") and k.lower() not in ("http_proxy", "https_proxy",
                                                                  "all_proxy", "no_proxy")}
    env.update(XDG_CACHE_HOME=str(tmp / "cache"), COLUMNS="200", http_proxy=NO_NETWORK,
               https_proxy=NO_NETWORK, HTTP_PROXY=NO_NETWORK, HTTPS_PROXY=NO_NETWORK)
    return env


def finish(run: subprocess.Popen[str], timeout: float = 120) -> str:
    """A started `hpsearch run`'s output once it ends (killed if it outlives `timeout`)."""
    try:
        return run.communicate(timeout=timeout)[0]
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()


def start_worker(name: str, url: str, log: Path, cwd: Path = ROOT) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "hpsearch", "worker", name, "--db", url,
                                 "--threads", "1"], stdout=out, stderr=subprocess.STDOUT,
                                cwd=cwd, start_new_session=True)


def kill_mid_trial(url: str, name: str, workers: list[subprocess.Popen[bytes]],
                   epochs: int = 2, timeout: float = 120) -> tuple[Trial, subprocess.Popen[bytes]]:
    """SIGKILL the worker of a running trial once it has finished `epochs` epochs: (that trial
    as it was at the kill, its dead worker). The worker is stopped first; on a loaded machine
    the trial may end between reading and stopping, so it is read again once frozen."""
    def mid_trial() -> list[Trial]:
        return [t for t in stored_trials(url, name)
                if t.state == "running" and t.epochs_run >= epochs]

    deadline = time.monotonic() + timeout
    while True:
        for trial in mid_trial():
            worker = next(w for w in workers if trial.worker.endswith(f":{w.pid}"))
            worker.send_signal(signal.SIGSTOP)
            still = [t for t in mid_trial() if t.number == trial.number]
            if still:
                worker.send_signal(signal.SIGKILL)
                worker.wait()
                return still[0], worker
            worker.send_signal(signal.SIGCONT)
        assert time.monotonic() < deadline, f"no worker finished {epochs} epochs of a trial"
        time.sleep(0.05)


def run_in_process(path: Path, url: str, trials: int | None = None,
                   device: str = "auto") -> None:
    config = load_study(path)
    prepare_study(config, url, trials)
    run_worker(config.name, url, device=device)


def count_test_loads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A list that grows by one each time the test split is read."""
    from hpsearch.trainer import data as data_mod

    calls: list[int] = []
    real = data_mod.load_test_split

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(data_mod, "load_test_split", counting)
    return calls


def stored_trials(url: str, name: str) -> list[Trial]:
    with Session(make_engine(url), expire_on_commit=False) as session:
        study_id = session.scalar(select(Study.id).where(Study.name == name))
        return list(session.scalars(
            select(Trial).where(Trial.study_id == study_id).order_by(Trial.number)))


def epoch_numbers(url: str, trial_id: int) -> list[int]:
    with Session(make_engine(url)) as session:
        return list(session.scalars(
            select(Epoch.epoch).where(Epoch.trial_id == trial_id).order_by(Epoch.epoch)))


def epochs_of(url: str, trial_id: int) -> list[Epoch]:
    with Session(make_engine(url), expire_on_commit=False) as session:
        return list(session.scalars(select(Epoch).where(Epoch.trial_id == trial_id)
                                    .order_by(Epoch.epoch)))


def slow_study(folder: Path, n_trials: int, epochs: int = 8) -> Path:
    """Trials of ~0.3 s per epoch, long enough to kill one mid-way."""
    path = write_tiny_study(folder, n_trials=n_trials, epochs=epochs, heartbeat=(1, 4))
    path.write_text(path.read_text().replace("synthetic_size = 300", "synthetic_size = 4000"))
    return path


def idx_images(images: torch.Tensor) -> bytes:
    n, h, w = images.shape
    return struct.pack(">IIII", 0x0803, n, h, w) + images.numpy().tobytes()


def idx_labels(labels: torch.Tensor) -> bytes:
    return struct.pack(">II", 0x0801, len(labels)) + labels.numpy().astype("uint8").tobytes()


IDX_TRAIN, IDX_TEST = 30, 12  # images in fake_dataset's splits


def fake_dataset() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """IDX_TRAIN training and IDX_TEST test images of random pixels and labels."""
    import torch

    gen = torch.Generator().manual_seed(7)
    out = {}
    for split, n in (("train", IDX_TRAIN), ("t10k", IDX_TEST)):
        images = torch.randint(0, 256, (n, 28, 28), generator=gen, dtype=torch.uint8)
        labels = torch.randint(0, 10, (n,), generator=gen)
        out[split] = (images, labels)
    return out


def write_idx(folder: Path, gz: bool) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The four MNIST-format files in `folder`, gzipped (Debian / download layout) or plain."""
    import gzip

    folder.mkdir(parents=True, exist_ok=True)
    dataset = fake_dataset()
    for split, (images, labels) in dataset.items():
        for kind, payload in (("images-idx3-ubyte", idx_images(images)),
                              ("labels-idx1-ubyte", idx_labels(labels))):
            name = f"{split}-{kind}"
            if gz:
                with gzip.open(folder / f"{name}.gz", "wb") as f:
                    f.write(payload)
            else:
                (folder / name).write_bytes(payload)
    return dataset
