"""Multi-fidelity budgets: [budget] rungs of data fraction × epochs, promotion by successive
halving across rungs, epoch rows with their fraction, resuming when the data grows."""

from __future__ import annotations

import tomllib
from pathlib import Path

import optuna
import pytest
from sqlalchemy import inspect, select
from sqlalchemy.orm import Session

from hpsearch.db import figure_queries, queries
from hpsearch.db.engine import make_engine
from hpsearch.db.migrate import downgrade, schema_drift, upgrade
from hpsearch.db.models import Trial
from hpsearch.errors import ConfigError
from hpsearch.params import TrialParams
from hpsearch.search.study_file import Rung, StudyConfig, load_study, parse_study
from hpsearch.trainer.data import DataOptions, load_train_val
from hpsearch.trainer.loop import fit
from tests.helpers import hps, run_in_process

RUNGS = ("[{fraction = 0.25, epochs = 1}, {fraction = 0.5, epochs = 2}, "
         "{fraction = 1.0, epochs = 3}]")


def rung_study(folder: Path, *, name: str = "rungs", rungs: str = RUNGS,
               pruner: str = "successive-halving", extra_budget: str = "",
               n_trials: int = 8) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(f"""
[study]
name = "{name}"
sampler = "random"
pruner = "{pruner}"
n_trials = {n_trials}

[data]
dataset = "synthetic"
synthetic_size = 400

[budget]
rungs = {rungs}
{extra_budget}

[pruner]
reduction_factor = 2

[workers]
checkpoint_dir = "{folder / 'checkpoints'}"

[space]
patch_size = 14
hidden_dim = 16
token_mlp_dim = 8
channel_mlp_dim = 16
lr = {{ low = 1e-4, high = 3e-2, log = true }}
batch_size = 32
precision = "fp32"
""")
    return path


def test_rungs_are_parsed_and_set_the_budget(tmp_path: Path) -> None:
    config = load_study(rung_study(tmp_path))
    assert config.rungs == (Rung(0.25, 1), Rung(0.5, 2), Rung(1.0, 3))
    assert config.max_epochs == 3


@pytest.mark.parametrize(("rungs", "extra", "pruner", "message"), [
    ("[{fraction = 0.5, epochs = 1}, {fraction = 0.25, epochs = 2}]", "", "successive-halving",
     "must both grow"),
    ("[{fraction = 0.25, epochs = 2}, {fraction = 1.0, epochs = 2}]", "", "successive-halving",
     "must both grow"),
    ("[{fraction = 0.25, epochs = 1}, {fraction = 0.5, epochs = 2}]", "", "successive-halving",
     "fraction = 1.0"),
    ("[{fraction = 0, epochs = 1}, {fraction = 1.0, epochs = 2}]", "", "successive-halving",
     "in (0, 1]"),
    ("[{fraction = 1.0, epochs = 2}]", "", "successive-halving", "at least two"),
    ("[{fraction = 0.5, epoch = 1}, {fraction = 1.0, epochs = 2}]", "", "successive-halving",
     "exactly fraction and epochs"),
    (RUNGS, "", "median", "need pruner 'successive-halving' or 'hyperband'"),
    (RUNGS, "max_epochs = 5", "successive-halving", "must equal the last rung's epochs"),
    (RUNGS, "min_epochs = 2", "successive-halving", "min_epochs does not apply"),
    # 0.01 of the 360 training images of synthetic_size 400 (a tenth is the validation split)
    ("[{fraction = 0.01, epochs = 1}, {fraction = 1.0, epochs = 2}]", "", "successive-halving",
     "fraction 0.01 trains on 4 of 360 training images; a rung needs at least 20"),
])
def test_bad_rungs_are_one_line_and_nothing_is_written(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        rungs: str, extra: str, pruner: str, message: str) -> None:
    path = rung_study(tmp_path, rungs=rungs, extra_budget=extra, pruner=pruner)
    with pytest.raises(ConfigError, match="rungs"):
        load_study(path)
    db = tmp_path / "h.db"
    code, out, err = hps(capsys, monkeypatch, "run", str(path), "--db", f"sqlite:///{db}")
    assert code != 0 and err.startswith("hpsearch: error:") and message in err, err
    assert len(err.strip().splitlines()) == 1 and not db.exists()


@pytest.mark.parametrize("pruner", ["successive-halving", "none"])
def test_rungs_with_several_objectives_say_they_cannot_be_combined(tmp_path: Path,
                                                                   pruner: str) -> None:
    """Either change alone used to send the user to the other error (a pruner for rungs, no
    pruner for several objectives)."""
    raw = tomllib.loads(rung_study(tmp_path).read_text())
    study = {**raw["study"], "objectives": ["val_acc:max", "params:min"], "pruner": pruner}
    with pytest.raises(ConfigError, match="rungs cannot be combined with several objectives"):
        parse_study({**raw, "study": study})


def test_a_rung_study_promotes_by_successive_halving(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'h.db'}"
    run_in_process(rung_study(tmp_path), url, device="cpu")
    engine = make_engine(url)
    with Session(engine) as session:
        trials = session.scalars(select(Trial).order_by(Trial.number)).all()
        fractions = {t.number: [e.fraction for e in t.epochs] for t in trials}
        states = {t.number: t.state for t in trials}
    engine.dispose()
    expected = [0.25, 0.5, 1.0]
    # every epoch row says which share of the training split it trained on
    assert all(f == expected[:len(f)] for f in fractions.values()), fractions
    # pruned trials stop at the end of a rung; complete ones ran all three
    assert {len(fractions[n]) for n, s in states.items() if s == "pruned"} <= {1, 2}
    assert all(len(fractions[n]) == 3 for n, s in states.items() if s == "complete")
    assert "pruned" in states.values() and "complete" in states.values()
    # Optuna saw one intermediate value per rung end but the last, at 2**i
    study = optuna.load_study(study_name="rungs", storage=url)
    for t in study.trials:
        assert set(t.intermediate_values) <= {1, 2} and t.intermediate_values
    # the report shows the rungs
    with make_engine(url).connect() as conn:
        stats = figure_queries.rung_stats(conn, queries.find_study(conn, "rungs"))
    assert [(r.fraction, r.last_epoch) for r in stats] == [(0.25, 1), (0.5, 2), (1.0, 3)]
    assert stats[0].trials == 8 and stats[0].trials > stats[1].trials >= stats[2].trials
    report = tmp_path / "r.html"
    code, _, err = hps(capsys, monkeypatch, "report", "rungs", "-o", str(report), "--db", url)
    assert code == 0, err
    assert "rungs (data fraction × epochs)" in report.read_text()


def test_promotion_resumes_and_keeps_the_cosine_curve(tmp_path: Path) -> None:
    """A rung resumes the previous rung's checkpoint on more data: its epochs continue (not
    redone), and the cosine schedule, which counts batches, ends where a run on the whole split
    from the start ends, although the earlier epochs had fewer batches."""
    data = load_train_val(DataOptions(dataset="synthetic", synthetic_size=400), seed=0)
    params = TrialParams(patch_size=14, hidden_dim=16, token_mlp_dim=8, channel_mlp_dim=16,
                         batch_size=32, precision="fp32", scheduler="cosine", epochs=3,
                         lr=1e-2, min_lr=1e-4)
    whole = fit(params, data, seed=0, device="cpu").run_to_end()
    checkpoint = tmp_path / "c.pt"
    seen: list[int] = []
    resume = None
    for fraction, stop in ((0.25, 1), (0.5, 2), (1.0, 3)):
        run = fit(params, data.train_fraction(fraction), seed=0, device="cpu",
                  checkpoint=checkpoint, resume_from=resume, stop_after=stop)
        seen += [m.epoch for m in run]
        resume = checkpoint
    assert seen == [1, 2, 3]  # each rung trains only its own epochs
    assert [m.epoch for m in run.history] == [1, 2, 3]
    assert run.history[-1].lr == pytest.approx(whole.history[-1].lr, rel=1e-6)
    assert len(data.train_fraction(0.25).train) == round(len(data.train) * 0.25)


def test_migration_0007_adds_and_drops_the_fraction(sqlite_url: str) -> None:
    upgrade(sqlite_url)
    assert schema_drift(sqlite_url) == []
    downgrade(sqlite_url, "0006")
    engine = make_engine(sqlite_url)
    try:
        assert "fraction" not in {c["name"] for c in inspect(engine).get_columns("hps_epoch")}
    finally:
        engine.dispose()
    upgrade(sqlite_url)
    engine = make_engine(sqlite_url)
    try:
        assert "fraction" in {c["name"] for c in inspect(engine).get_columns("hps_epoch")}
    finally:
        engine.dispose()
    assert schema_drift(sqlite_url) == []


@pytest.mark.parametrize("pruner", ["successive-halving", "hyperband"])
def test_the_pruners_rungs_are_the_rung_ends(tmp_path: Path, pruner: str) -> None:
    """Optuna's rungs with min_resource 1 fall on steps rf**i: one per rung end but the last."""
    from hpsearch.search.space import make_pruner

    config = load_study(rung_study(tmp_path, pruner=pruner))
    built = make_pruner(config)
    if pruner == "hyperband":
        assert isinstance(built, optuna.pruners.HyperbandPruner)
        assert (built._min_resource, built._max_resource) == (1, 2 ** (len(config.rungs) - 1))
    else:
        assert isinstance(built, optuna.pruners.SuccessiveHalvingPruner)
        assert (built._min_resource, built._min_early_stopping_rate) == (1, 0)
    # the stored spec and settings read back as the study parsed
    assert StudyConfig.from_stored(config.name, config.spec_json(),
                                   config.settings_json()) == config
