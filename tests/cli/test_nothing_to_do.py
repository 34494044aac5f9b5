"""`run` and `worker` on a study that has its trials answer at once: from our rows, before
Optuna, torch or Alembic (the schema is at head) is imported and before any data is loaded."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.helpers import run_in_process, stored_trials
from tests.study_files import write_tiny_study


def imported_packages(stderr: str) -> set[str]:
    """The top-level packages a `python -X importtime` run imported."""
    return {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in stderr.splitlines()
            if line.startswith("import time:")}


def test_a_finished_study_is_answered_without_optuna_torch_or_alembic(sqlite_url: str,
                                                              tmp_path: Path) -> None:
    study = write_tiny_study(tmp_path, n_trials=2, epochs=1, dry_run=0.01)
    run_in_process(study, sqlite_url)
    for args, said in ((["run", str(study)], "tiny: 2 of 2 trials finished already"),
                       (["worker", "tiny"], "tiny: 2 of 2 trials finished already"),
                       (["run", str(study), "--trials", "1"], "2 of 1 trials finished")):
        proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "hpsearch", *args,
                               "--db", sqlite_url], capture_output=True, text=True,
                              timeout=120, cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert said in proc.stdout and "nothing to run" in proc.stdout, proc.stdout
        assert not {"optuna", "torch", "alembic"} & imported_packages(proc.stderr), args
    # one more trial wanted: the run goes on as before
    proc = subprocess.run([sys.executable, "-m", "hpsearch", "run", str(study), "--trials", "3",
                           "--db", sqlite_url], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 0 and "nothing to run" not in proc.stdout, proc.stdout
    assert [t.state for t in stored_trials(sqlite_url, "tiny")] == ["complete"] * 3


def test_evaluate_of_an_unknown_study_is_answered_without_torch(sqlite_url: str,
                                                                tmp_path: Path) -> None:
    run_in_process(write_tiny_study(tmp_path, n_trials=1, epochs=1, dry_run=0.01), sqlite_url)
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "hpsearch", "evaluate",
                           "tinny", "--db", sqlite_url], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    said = [line for line in proc.stderr.splitlines() if not line.startswith("import time:")]
    assert proc.returncode != 0 and len(said) == 1, proc.stderr
    assert "unknown study 'tinny'" in said[0] and "known: 'tiny'" in said[0], said
    assert "torch" not in imported_packages(proc.stderr)


def test_a_finished_study_on_data_with_files_is_answered_before_the_data_is_read(
        sqlite_url: str, tmp_path: Path) -> None:
    """`run` reads a dataset's files before it writes anything, but only where there is work:
    a finished study on a user's .npz answers without torch (before: 2.1 s, torch imported)."""
    x = np.random.default_rng(0).integers(0, 256, (40, 28, 28), dtype=np.uint8)
    y = np.arange(40) % 2
    np.savez(tmp_path / "arrays.npz", x_train=x, y_train=y, x_test=x[:8], y_test=y[:8])
    study = write_tiny_study(tmp_path, n_trials=1, epochs=1, dry_run=0.01)
    study.write_text(study.read_text().replace('dataset = "synthetic"',
                                               f'dataset = "{tmp_path / "arrays.npz"}"'))
    run_in_process(study, sqlite_url)
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "hpsearch", "run",
                           str(study), "--db", sqlite_url], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 0 and "nothing to run" in proc.stdout, proc.stdout + proc.stderr
    assert "torch" not in imported_packages(proc.stderr)
