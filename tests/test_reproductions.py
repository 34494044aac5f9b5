"""studies/reproductions/*.toml: the coursework's runs as fixed-configuration studies. Each file
parses, is what it claims to be (one fixed trial, no pruning, fp32), and runs one epoch through
the real runner on a tiny synthetic dataset."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from hpsearch.config import load_study, parse_study
from hpsearch.db.engine import make_engine
from hpsearch.db.models import Epoch, Study, Trial
from hpsearch.runner import run_worker
from hpsearch.storage import prepare_study

FOLDER = Path(__file__).resolve().parents[1] / "studies" / "reproductions"
FILES = sorted(FOLDER.glob("*.toml"))


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
