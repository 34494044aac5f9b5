"""A model of the user's own (`model = "module:function"`, [space.model_args]): searched with
pruning, stored on the trial rows, evaluated; a broken factory fails its trial with one line
naming the user's file and line."""

from __future__ import annotations

import re
import sqlite3
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hpsearch import api
from hpsearch.errors import ConfigError
from hpsearch.params import TrialParams
from hpsearch.search.evaluate import plan_evaluation, run_evaluation
from hpsearch.search.run_file import resolve_run
from hpsearch.search.study import prepare_study
from hpsearch.search.study_file import load_study, parse_study
from hpsearch.search.warmstart import Candidate, enqueue
from hpsearch.search.worker import run_worker
from hpsearch.trainer.factory import FactoryError
from hpsearch.trainer.model import build_model
from tests.helpers import (
    epochs_of,
    hps,
    kill_mid_trial,
    one_error_line,
    start_worker,
    stored_trials,
)

NETS = '''\
from torch import nn


def tiny_cnn(*, in_channels, image_size, num_classes, width=4, pool="max"):
    pooling = nn.MaxPool2d(2) if pool == "max" else nn.AvgPool2d(2)
    return nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), pooling,
                         nn.Flatten(), nn.Linear(width * (image_size // 2) ** 2, num_classes))


def raises(**kwargs):
    return nn.Linear(1, 2, bogus=1)


def not_a_module(**kwargs):
    return "a model"


def wrong_shape(*, in_channels, image_size, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size ** 2, 3))


def needs_depth(*, in_channels, image_size, num_classes, width, pool, depth):
    return tiny_cnn(in_channels=in_channels, image_size=image_size, num_classes=num_classes)


def no_pool(in_channels, image_size, num_classes, width=4):
    return tiny_cnn(in_channels=in_channels, image_size=image_size, num_classes=num_classes)
'''


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A package of factories in the working directory, imported from there as documented."""
    name = f"userpkg_{tmp_path.name.replace('-', '_')}"
    (tmp_path / name).mkdir()
    (tmp_path / name / "__init__.py").write_text("")
    (tmp_path / name / "nets.py").write_text(NETS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the working directory it appends
    return f"{name}.nets"


def study_file(folder: Path, model: str, images: int = 200, epochs: int = 2,
               workers: str = "") -> Path:
    """A 2-trial study of `model` (its TOML value) with pruning, on synthetic data; `workers`:
    more lines of its [workers] table."""
    path = folder / "user.toml"
    path.write_text(f"""
[study]
name = "user"
sampler = "random"
pruner = "median"
n_trials = 2

[pruner]
startup_trials = 1

[data]
dataset = "synthetic"
synthetic_size = {images}

[budget]
max_epochs = {epochs}

[workers]
checkpoint_dir = "checkpoints"
{workers}

[space]
model = {model}
lr = {{ low = 1e-3, high = 1e-2, log = true }}
batch_size = 64
precision = "fp32"

[space.model_args]
width = {{ low = 2, high = 6 }}
pool = ["max", "avg"]
""")
    return path


def run_study(path: Path, url: str) -> None:
    config = load_study(path)
    prepare_study(config, url)
    run_worker(config.name, url, device="cpu")


def test_a_factory_is_searched_stored_and_evaluated(package: str, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'h.db'}"
    run_study(study_file(tmp_path, f'"{package}:tiny_cnn"'), url)
    trials = stored_trials(url, "user")
    assert [t.state for t in trials] in (["complete", "complete"], ["complete", "pruned"])
    for trial in trials:
        assert trial.params["model"] == f"{package}:tiny_cnn"
        assert 2 <= trial.params["model_args.width"] <= 6
        assert trial.params["model_args.pool"] in ("max", "avg")
        assert "dropout" not in trial.params and "patch_size" not in trial.params
    [result] = run_evaluation(plan_evaluation("user", url, epochs=1), url, device="cpu")
    assert 0.0 <= result.test_acc <= 1.0

    # `best --format toml` writes `model_args.width = 4`, a TOML dotted key; `train --config`
    # reads it back as the factory's argument
    code, out, _ = hps(capsys, monkeypatch, "best", "user", "--db", url, "-f", "toml")
    (tmp_path / "best.toml").write_text(out)
    run = resolve_run(tmp_path / "best.toml")
    [best] = [t for t in trials if f"trial {t.number}," in out]
    assert code == 0 and run.params.model == best.params["model"]
    assert run.params.model_args == (("pool", best.params["model_args.pool"]),
                                     ("width", best.params["model_args.width"]))

    # the best trial's kept model is exported and loads again through its factory
    code, _, err = hps(capsys, monkeypatch, "export-model", "user", "-o",
                       str(tmp_path / "model.pt"), "--db", url)
    assert code == 0, err
    loaded = api.load_model(tmp_path / "model.pt")
    assert loaded.params == run.params.replace(epochs=2)
    assert loaded.model[0].out_channels == best.params["model_args.width"]  # tiny_cnn's conv


@pytest.mark.slow
def test_a_killed_factory_trial_resumes_from_its_checkpoint_and_is_ensembled(
        package: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker (a process of its own, importing the factory from its working directory) is
    killed mid-trial; a second worker fails the dead trial and its retry resumes from the
    checkpoint; both trials are then retrained, scored and ensembled."""
    url = f"sqlite:///{tmp_path / 'h.db'}"
    # a grace period long enough for the live worker's heartbeats on a loaded machine
    config = load_study(study_file(tmp_path, f'"{package}:tiny_cnn"', images=4000, epochs=6,
                                   workers="heartbeat_interval = 2\ngrace_period = 30"))
    factory = f"{package}:tiny_cnn"
    # the second is the better, so that the median pruner lets both complete (an ensemble
    # needs two)
    enqueue(url, config, [
        Candidate({"model": factory, "model_args.width": 4, "model_args.pool": "max",
                   "lr": 0.003}, "the test"),
        Candidate({"model": factory, "model_args.width": 6, "model_args.pool": "max",
                   "lr": 0.01}, "the test")])
    worker = start_worker("user", url, tmp_path / "worker.log", cwd=tmp_path)
    try:
        killed, _ = kill_mid_trial(url, "user", [worker])
    finally:
        if worker.poll() is None:
            worker.kill()
    # its last heartbeat made older than the grace period, rather than waited out (31 s)
    stale = datetime.now(UTC) - timedelta(seconds=config.workers.grace_period + 60)
    with sqlite3.connect(tmp_path / "h.db") as conn:
        conn.execute("UPDATE trial_heartbeats SET heartbeat = ?",
                     (str(stale.replace(tzinfo=None)),))
    run_worker("user", url, device="cpu")

    trials = stored_trials(url, "user")
    (retry,) = [t for t in trials if t.retried_from == killed.number]
    assert [t.state for t in trials if t.number != killed.number] == ["complete", "complete"]
    assert retry.state == "complete" and retry.epochs_run == 6
    # the epochs finished before the kill are carried over (same timings), not trained again
    before, after = epochs_of(url, killed.id), epochs_of(url, retry.id)
    assert [e.epoch for e in after] == list(range(1, 7)) and killed.epochs_run >= 2
    for old, new in zip(before[:killed.epochs_run - 1], after, strict=False):
        assert (new.seconds, new.val_acc) == (old.seconds, old.val_acc)

    code, out, err = hps(capsys, monkeypatch, "evaluate", "user", "--ensemble", "2",
                         "--epochs", "1", "--db", url, "--device", "cpu", "--threads", "1")
    assert code == 0, err
    assert "test acc ensemble (2 trials)" in out


def test_a_broken_factory_fails_its_trial_with_one_line(package: str, tmp_path: Path) -> None:
    """The model is searched between a factory that raises and one that works: the broken one's
    trials fail with the user's file and line as their reason, and the study goes on."""
    url = f"sqlite:///{tmp_path / 'h.db'}"
    config = load_study(study_file(tmp_path, f'["{package}:raises", "{package}:tiny_cnn"]'))
    broken = {"model": f"{package}:raises", "model_args.width": 3, "model_args.pool": "max",
              "lr": 0.005}
    enqueue(url, config, [Candidate(broken, "the test")])  # it runs first
    run_worker(config.name, url, device="cpu")
    trials = stored_trials(url, "user")
    nets = tmp_path / package.split(".")[0] / "nets.py"
    failed = [t for t in trials if t.params["model"].endswith(":raises")]
    assert broken.items() <= trials[0].params.items()  # the queued trial ran first
    assert failed[0] == trials[0] and all(t.state == "failed" for t in failed)
    assert len(trials) - len(failed) == 2  # the study reached its 2 trials all the same
    for trial in failed:
        assert trial.reason == (f"model factory {package}:raises raised at {nets}:11: TypeError: "
                                "Linear.__init__() got an unexpected keyword argument 'bogus'")


@pytest.mark.parametrize(("factory", "line", "says", "shape"), [
    ("not_a_module", 14, "returned str, not a torch.nn.Module", (1, 28, 28)),
    ("wrong_shape", 18, "to shape (2, 3); expected (2, 10) logits", (1, 28, 28)),
    # no line of the user's runs in the forward pass (torch's layers only): the factory is
    # named by its own line (was: "at ?")
    ("wrong_shape", 18, "failed on a batch of 2 images of 1x12x20 at ", (1, 12, 20)),
])
def test_a_factory_that_builds_no_classifier_is_named(
        package: str, tmp_path: Path, factory: str, line: int, says: str,
        shape: tuple[int, int, int]) -> None:
    params = TrialParams(model=f"{package}:{factory}")
    with pytest.raises(FactoryError, match=r"^[^\n]+$") as error:
        build_model(params, shape)
    nets = tmp_path / package.split(".")[0] / "nets.py"
    assert says in str(error.value)
    assert f"({nets}:{line})" in str(error.value) or f"at {nets}:{line}:" in str(error.value)


@pytest.mark.parametrize(("factory", "says"), [
    ("needs_depth", r"\(\S+nets.py:22\) needs depth, which \[space.model_args\] does not give$"),
    ("no_pool", r"\(\S+nets.py:26\) does not take pool, which every trial passes"),
    ("absent", "has no function 'absent'"),
])
def test_run_checks_the_factory_before_it_writes_anything(
        package: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch, factory: str, says: str) -> None:
    """A factory that does not fit the arguments every trial passes (before: each trial
    failed alike until the worker gave up, exit 1) or cannot be imported is one line from
    `run`, exit 2, before the database exists."""
    db = tmp_path / "h.db"
    path = study_file(tmp_path, f'"{package}:{factory}"')
    code, _, err = hps(capsys, monkeypatch, "run", str(path), "--db", f"sqlite:///{db}")
    assert code == 2 and re.search(f"model factory {package}:{factory}\\b.*{says}",
                                   one_error_line(err)), err
    assert not db.exists()


def test_model_args_need_a_factory() -> None:
    with pytest.raises(ConfigError, match="model is not one"):
        parse_study({"study": {"name": "x"}, "space": {"model_args": {"width": [8, 16]}}})
    with pytest.raises(ConfigError, match="unknown model 'nets'"):
        parse_study({"study": {"name": "x"}, "space": {"model": "nets"}})
