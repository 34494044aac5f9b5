"""A study file edited between runs: compatible changes need --update and are stored,
incompatible ones are refused, each difference named; and `best --format toml` carries the seeds,
so `train --config` repeats the best trial's training exactly."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from hpsearch.db.engine import make_engine
from hpsearch.db.models import Study
from hpsearch.search.study import prepare_study
from hpsearch.search.study_changes import compare
from hpsearch.search.study_file import StudyConfig, load_study
from tests.helpers import ROOT, epochs_of, stored_trials
from tests.study_files import write_tiny_study


def hpsearch(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hpsearch", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def stored_config(url: str, name: str = "tiny") -> StudyConfig:
    engine = make_engine(url)
    with engine.connect() as conn:
        spec, settings = conn.execute(select(Study.spec, Study.settings)
                                      .where(Study.name == name)).one()
    engine.dispose()
    return StudyConfig.from_stored(name, spec, settings)


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_defaults_written_out_are_no_change(tmp_path: Path) -> None:
    path = write_tiny_study(tmp_path)
    before = load_study(path)
    edit(path, 'pruner = "none"', 'pruner = "none"\nmetric = "val_acc"')  # the default
    edit(path, "batch_size = 64", "batch_size = 64\nweight_decay = 0.0")  # the default
    assert compare(before, load_study(path)) == []
    edit(path, "lr = { low = 1e-3, high = 1e-2, log = true }", "lr = { low = 1e-3, high = 1e-1 }")
    (change,) = compare(before, load_study(path))
    assert change.key == "space.lr" and not change.compatible
    assert change.line() == ("  space.lr: { low = 0.001, high = 0.01, log = true } -> "
                             "{ low = 0.001, high = 0.1 }")


def test_an_hours_budget_may_change_between_runs(tmp_path: Path) -> None:
    path = write_tiny_study(tmp_path)
    before = load_study(path)
    edit(path, "max_epochs = 3", "max_epochs = 3\nhours = 2\nfinal = { seeds = 3 }")
    changes = compare(before, load_study(path))
    assert [(c.key, c.compatible) for c in changes] == [("budget.final", True),
                                                       ("budget.hours", True)]
    assert changes[1].line() == "  budget.hours: (unset) -> 2.0"


def test_the_pruned_objective_is_what_a_trial_reports(tmp_path: Path) -> None:
    """[pruner] objective: stored with the spec (an old spec without it prunes on the first
    objective), and a change is incompatible: the curves already reported measure the other."""
    path = write_tiny_study(tmp_path, pruner="median")
    edit(path, "seed = 0", 'seed = 0\nobjectives = ["val_acc", "val_loss"]')
    before = load_study(path)
    assert before.pruned.measure == "val_acc"
    edit(path, "[space]", '[pruner]\nobjective = "val_loss"\n\n[space]')
    after = load_study(path)
    assert after.pruned.measure == "val_loss"
    spec = after.spec_json()
    assert StudyConfig.from_stored("tiny", spec, after.settings_json()).pruned_objective == 1
    del spec["pruned_objective"]
    assert StudyConfig.from_stored("tiny", spec, after.settings_json()).pruned_objective == 0
    (change,) = compare(before, after)
    assert change.line() == "  pruner.objective: 'val_acc' -> 'val_loss'"
    assert not change.compatible


def test_incompatible_changes_are_refused_with_each_difference(sqlite_url: str,
                                                               tmp_path: Path) -> None:
    path = write_tiny_study(tmp_path, n_trials=1, epochs=1)
    prepare_study(load_study(path), sqlite_url)
    original = stored_config(sqlite_url)
    edit(path, "seed = 0", "seed = 3")
    edit(path, "patch_size = [7, 14]", "patch_size = [7]")
    edit(path, "n_trials = 1", "n_trials = 2")  # compatible, but with incompatible ones
    for extra in ([], ["--update"]):
        done = hpsearch("run", str(path), "--db", sqlite_url, *extra)
        assert done.returncode == 2 and done.stdout == ""
        lines = done.stderr.splitlines()
        assert lines[1:-1] == ["  space.patch_size: [7, 14] -> [7]  (incompatible)",
                               "  study.seed: 0 -> 3  (incompatible)"], done.stderr
        assert lines[-1].startswith("hpsearch: error: the study file no longer matches study "
                                    "'tiny': space.patch_size, study.seed changed")
    assert stored_config(sqlite_url) == original
    assert stored_trials(sqlite_url, "tiny") == []


def test_update_keeps_the_runs_own_trials(sqlite_url: str, tmp_path: Path) -> None:
    """`--trials N` with `--update` is this run's n_trials, as without it (before: the
    file's settings, stored by the update, replaced it: the run showed '3/1 finished' and
    went on to the file's n_trials)."""
    path = write_tiny_study(tmp_path, n_trials=1, epochs=1, dry_run=0.01)
    command = ["run", str(path), "--db", sqlite_url, "--threads", "1",
               "--log-dir", str(tmp_path / "logs")]
    assert hpsearch(*command).returncode == 0
    edit(path, "n_trials = 1", "n_trials = 50")
    edit(path, 'sampler = "random"', 'sampler = "tpe"')
    updated = hpsearch(*command, "--update", "--trials", "2")
    assert updated.returncode == 0, updated.stderr
    assert "study.sampler: 'random' -> 'tpe'" in updated.stdout
    assert stored_config(sqlite_url).n_trials == 2
    assert len(stored_trials(sqlite_url, "tiny")) == 2, updated.stdout


@pytest.mark.slow
def test_compatible_changes_need_update_and_are_stored(sqlite_url: str, tmp_path: Path) -> None:
    path = write_tiny_study(tmp_path, n_trials=1, epochs=1)
    command = ["run", str(path), "--db", sqlite_url, "--threads", "1",
               "--log-dir", str(tmp_path / "logs")]
    assert hpsearch(*command).returncode == 0
    assert hpsearch(*command).returncode == 0  # the same file again: no change, nothing to do
    edit(path, "n_trials = 1", "n_trials = 2")
    edit(path, 'sampler = "random"', 'sampler = "tpe"')
    refused = hpsearch(*command)
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.splitlines()[1:] == [
        "  study.sampler: 'random' -> 'tpe'",
        "hpsearch: error: the study file changed since study 'tiny' started (study.sampler); "
        "rerun with --update to apply and record the change"]
    spec = stored_config(sqlite_url).spec_json()
    assert stored_config(sqlite_url).sampler == "random"

    updated = hpsearch(*command, "--update")
    assert updated.returncode == 0, updated.stderr
    assert "stored settings updated" in updated.stdout
    assert "study.sampler: 'random' -> 'tpe'" in updated.stdout
    assert "2 trials, sampler tpe" in updated.stdout  # the header and the stored config agree
    stored = stored_config(sqlite_url)
    assert (stored.sampler, stored.n_trials) == ("tpe", 2)
    assert stored.spec_json() == spec  # --update changes the settings only
    assert len([t for t in stored_trials(sqlite_url, "tiny") if t.state == "complete"]) == 2


@pytest.mark.slow
def test_best_toml_carries_the_seeds_and_train_repeats_the_trial(sqlite_url: str,
                                                                 tmp_path: Path) -> None:
    path = write_tiny_study(tmp_path, n_trials=2, epochs=2)
    edit(path, "seed = 0", "seed = 3")  # the trial seeds are then 3 and 4, the split seed 3
    done = hpsearch("run", str(path), "--db", sqlite_url, "--threads", "1",
                    "--log-dir", str(tmp_path / "logs"))
    assert done.returncode == 0, done.stderr
    best = hpsearch("best", "tiny", "--db", sqlite_url, "--format", "toml")
    assert best.returncode == 0, best.stderr
    config = tmp_path / "best.toml"
    config.write_text(best.stdout)
    number = int(re.search(r"trial (\d+),", best.stdout).group(1))
    assert f"\nseed = {3 + number} " in best.stdout and "\nsplit_seed = 3 " in best.stdout

    trial = next(t for t in stored_trials(sqlite_url, "tiny") if t.number == number)
    first = epochs_of(sqlite_url, trial.id)[0]
    retrained = hpsearch("train", "--config", str(config), "--threads", "1", "--epochs", "1")
    assert retrained.returncode == 0, retrained.stderr
    line = retrained.stdout.splitlines()[0]
    assert (f"train loss {first.train_loss:.4f} acc {first.train_acc:.4f}  "
            f"val loss {first.val_loss:.4f} acc {first.val_acc:.4f}") in line
    other = hpsearch("train", "--config", str(config), "--threads", "1", "--epochs", "1",
                     "--seed", "0")  # the seeds matter: without them the numbers differ
    assert f"train loss {first.train_loss:.4f}" not in other.stdout.splitlines()[0]
