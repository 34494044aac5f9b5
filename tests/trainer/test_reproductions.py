"""studies/reproductions/*.toml: the coursework's runs as fixed-configuration studies. Each file
parses, is what it claims to be (one fixed trial, no pruning, fp32), says what the coursework
stated and what was chosen, names every option of its optimiser and scheduler (so a change of
hpsearch's defaults cannot change it), builds the same torch objects as the coursework's plain
PyTorch calls, and runs one epoch through the real runner on a tiny synthetic dataset."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path

import pytest
import torch
from sqlalchemy import select
from sqlalchemy.orm import Session

from hpsearch.db.engine import make_engine
from hpsearch.db.models import Epoch, Study, Trial
from hpsearch.search.study import prepare_study
from hpsearch.search.study_file import load_study, parse_study
from hpsearch.search.worker import run_worker
from hpsearch.trainer.loop import make_optimizer
from hpsearch.trainer.schedule import Schedule

FOLDER = Path(__file__).resolve().parents[2] / "studies" / "reproductions"
FILES = sorted(FOLDER.glob("*.toml"))
# the options each optimiser and scheduler takes: a reproduction states every one of them
OPTIONS = {
    "sgd": ("lr", "momentum", "nesterov", "weight_decay"),
    "adam": ("lr", "beta1", "beta2", "eps", "weight_decay"),
    "radam": ("lr", "beta1", "beta2", "eps", "weight_decay"),
    "none": (),
    "plateau": ("gamma", "plateau_metric", "plateau_mode", "plateau_patience",
                "plateau_threshold", "plateau_cooldown", "min_lr"),
}


def test_there_are_reproductions() -> None:
    assert len(FILES) >= 12


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_reproduction_is_a_fixed_fp32_study(path: Path) -> None:
    text = path.read_text()
    assert text.startswith("# Reproduces "), "each file says what it reproduces"
    assert "fp32" in text.split("[study]")[0], "the comment explains the fp32 precision"
    config = load_study(path)
    assert config.space == {}, "every [space] value is a scalar"
    assert (config.n_trials, config.pruner, config.sampler) == (1, "none", "random")
    assert config.data.dataset == "fashion-mnist"
    params = config.base_params()
    assert params.precision == "fp32"
    assert params.epochs == config.max_epochs and params.batch_size == 256
    assert config.name == f"repro-{path.stem}"


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_reproduction_states_what_it_sets_and_what_it_chose(path: Path) -> None:
    header = path.read_text().split("[study]")[0]
    assert "# Stated by the coursework (set below):" in header
    assert "# Not stated by the coursework, chosen here:" in header
    config = load_study(path)
    params = config.base_params()
    missing = [key for key in OPTIONS[params.optimizer] + OPTIONS[params.scheduler]
               if key not in config.fixed]
    assert not missing, f"options left to hpsearch's defaults: {missing}"


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_reproduction_builds_what_the_coursework_built(path: Path) -> None:
    """The optimiser and scheduler equal the coursework's plain calls, which pass only what the
    header says was stated: `Adam(params, lr=..., weight_decay=...)`, `SGD(params, lr=...)`,
    `ReduceLROnPlateau(optimizer, 'min')`; everything else is PyTorch's default."""
    params = load_study(path).base_params()
    ours = make_optimizer(params, torch.nn.Linear(2, 2))
    cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "radam": torch.optim.RAdam}
    theirs = cls[params.optimizer](torch.nn.Linear(2, 2).parameters(), lr=params.lr,
                                   weight_decay=params.weight_decay)
    assert type(ours) is type(theirs)
    for key, value in theirs.defaults.items():
        if key not in ("fused", "foreach"):  # how it is computed, not what
            assert ours.defaults[key] == value, key
    if params.scheduler == "plateau":
        ours_s = Schedule(params, ours, steps_per_epoch=1).plateau
        theirs_s = torch.optim.lr_scheduler.ReduceLROnPlateau(theirs, "min")
        for key in ("mode", "factor", "patience", "threshold", "threshold_mode", "cooldown",
                    "min_lrs", "eps"):
            assert getattr(ours_s, key) == getattr(theirs_s, key), key


@pytest.fixture(scope="module")
def shared_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('repro') / 'h.db'}"


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_reproduction_runs_one_epoch_on_synthetic_data(path: Path, shared_url: str,
                                                       tmp_path: Path) -> None:
    doc = copy.deepcopy(tomllib.loads(path.read_text()))
    doc["data"] = {"dataset": "synthetic", "synthetic_size": 60, "val_fraction": 0.2}
    doc["budget"] = {"max_epochs": 1}
    doc["workers"] = {"checkpoint_dir": str(tmp_path / "checkpoints")}
    config = parse_study(doc, str(path))
    prepare_study(config, shared_url)
    run_worker(config.name, shared_url, device="cpu")
    engine = make_engine(shared_url)
    try:
        with Session(engine) as session:
            trials = session.execute(select(Trial.state, Trial.epochs_run, Trial.reason)
                                     .join(Study).where(Study.name == config.name)).all()
            epochs = session.scalars(select(Epoch.epoch).join(Trial).join(Study)
                                     .where(Study.name == config.name)).all()
    finally:
        engine.dispose()
    assert [tuple(t) for t in trials] == [("complete", 1, None)]
    assert list(epochs) == [1]
