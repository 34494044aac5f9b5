"""Dry-run trials ([dry_run] in a study file): no training, no torch, the real path otherwise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from hpsearch.api import create_study
from hpsearch.db.engine import make_engine
from hpsearch.db.models import Epoch
from hpsearch.errors import ConfigError
from hpsearch.params import TrialParams
from hpsearch.search.dryrun import curve_ceiling, synthetic_epoch
from hpsearch.search.study_file import load_study, parse_study
from tests.helpers import epoch_numbers, stored_trials
from tests.study_files import write_tiny_study

ROOT = Path(__file__).resolve().parents[2]


def test_the_dry_run_table_is_read_and_checked(tmp_path: Path) -> None:
    assert load_study(write_tiny_study(tmp_path, dry_run=0.5)).dry_run == 0.5
    assert load_study(write_tiny_study(tmp_path)).dry_run is None
    assert parse_study({"study": {"name": "d"}, "dry_run": {}}).dry_run == 1.0
    with pytest.raises(ConfigError, match="seconds_per_epoch must be at least 0"):
        parse_study({"study": {"name": "d"}, "dry_run": {"seconds_per_epoch": -1}})
    with pytest.raises(ConfigError, match=r"unknown key\(s\) in \[dry_run\]: seconds"):
        parse_study({"study": {"name": "d"}, "dry_run": {"seconds": 1}})


def test_the_synthetic_curve_rewards_good_params_and_rises_with_epochs() -> None:
    good, bad = TrialParams(lr=10 ** -2.5), TrialParams(lr=0.5)
    assert curve_ceiling(good) > curve_ceiling(bad) + 0.1
    accs = [synthetic_epoch(good, e, seed=0, seconds=0).val_acc for e in range(1, 6)]
    assert accs == sorted(accs) and accs[0] > 0.2
    assert synthetic_epoch(good, 3, 7, 0) == synthetic_epoch(good, 3, 7, 0)  # reproducible
    assert synthetic_epoch(good, 3, 7, 0) != synthetic_epoch(good, 3, 8, 0)


WORKER_PROBE = """
import sys
from hpsearch.cli import app
try:
    app(sys.argv[1:])
except SystemExit as exc:
    print("exit", exc.code)
print("torch imported:", "torch" in sys.modules)
"""


def test_a_dry_run_worker_runs_the_real_path_without_torch(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'dry.db'}"
    path = write_tiny_study(tmp_path, n_trials=10, epochs=4, sampler="tpe", pruner="median",
                            dry_run=0.02, extra_space="dropout = { low = 0.0, high = 0.9 }")
    create_study(path, url)  # [pruner] startup_trials defaults to 5: trials 6-10 may be pruned
    # the worker command, in a process that reports whether it imported torch
    done = subprocess.run([sys.executable, "-c", WORKER_PROBE, "worker", "tiny", "--db", url],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert "exit None" in done.stdout or "exit 0" in done.stdout, output
    assert "torch imported: False" in done.stdout, output
    trials = stored_trials(url, "tiny")
    assert [t.number for t in trials] == list(range(10))
    assert {t.state for t in trials} == {"complete", "pruned"}  # the pruner acted
    for trial in trials:
        assert trial.device == "dry-run" and trial.n_params is None
        assert epoch_numbers(url, trial.id) == list(range(1, trial.epochs_run + 1))
        assert trial.seconds >= 0.02 * trial.epochs_run
    with Session(make_engine(url)) as session:
        accs = session.scalars(select(Epoch.val_acc)).all()
    assert len(set(accs)) == len(accs)  # a curve that depends on the params, not a constant
    assert not list((tmp_path / "checkpoints").glob("**/*.pt"))  # no checkpoints written
