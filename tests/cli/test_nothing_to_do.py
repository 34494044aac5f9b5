"""`run` and `worker` on a study that has its trials answer at once: from our rows, before
Optuna, torch or Alembic (the schema is at head) is imported and before any data is loaded."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
