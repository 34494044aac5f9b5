"""`hpsearch evaluate` on tiny real studies: retraining on train + validation, one test pass per
seed, rows in hps_evaluation, the test column in the query commands, and the guarantee that a
study never reads the test split."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import optuna
import pytest
import torch
from sqlalchemy import delete, func, inspect, select
from sqlalchemy.orm import Session

from hpsearch.db import queries
from hpsearch.db.engine import make_engine
from hpsearch.db.migrate import downgrade, schema_drift, upgrade
from hpsearch.db.models import EnsembleEvaluation, Evaluation, Study, Trial
from hpsearch.db.optuna_tables import BUDGET_LIMITS_KEY, BUDGET_USE_KEY
from hpsearch.errors import HpsearchError
from hpsearch.params import TrialParams
from hpsearch.search import ensemble as ensemble_mod
from hpsearch.search import launcher
from hpsearch.search.ensemble import plan_ensemble, run_ensemble
from hpsearch.search.evaluate import final_checkpoint_path, plan_evaluation, run_evaluation
from hpsearch.search.study_file import parse_study
from hpsearch.trainer import data as data_mod
from hpsearch.trainer import loop as train_mod
from hpsearch.trainer.model import build_model, count_parameters
from tests.db_rows import model_rows, sqlite_copy
from tests.helpers import count_test_loads, hps, run_in_process
from tests.study_files import write_tiny_study

EPOCHS = 3


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real tiny study (synthetic data), run once; tests work on copies of its database."""
    folder = tmp_path_factory.mktemp("evaluate")
    run_in_process(write_tiny_study(folder, n_trials=2, epochs=EPOCHS, heartbeat=(1, 120)),
                   f"sqlite:///{folder / 'h.db'}", device="cpu")
    return folder


@pytest.fixture
def url(tiny_study: Path, tmp_path: Path) -> str:
    return sqlite_copy(tiny_study, tmp_path)


def evaluations(url: str) -> list[Evaluation]:
    return model_rows(url, Evaluation)


def ensemble_rows(url: str) -> list[EnsembleEvaluation]:
    engine = make_engine(url)
    try:
        with Session(engine, expire_on_commit=False) as session:
            return list(session.scalars(select(EnsembleEvaluation)
                                        .order_by(EnsembleEvaluation.id)))
    finally:
        engine.dispose()


def stored_trials(url: str, name: str) -> list[Trial]:
    engine = make_engine(url)
    try:
        with Session(engine, expire_on_commit=False) as session:
            study_id = session.scalar(select(Study.id).where(Study.name == name))
            return list(session.scalars(select(Trial).where(Trial.study_id == study_id)
                                        .order_by(Trial.number)))
    finally:
        engine.dispose()




def test_evaluate_the_best_trial_stores_one_row(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_test_loads(monkeypatch)
    plan = plan_evaluation("tiny", url)
    engine = make_engine(url)
    with engine.connect() as conn:
        best = queries.best_trial(conn, queries.find_study(conn, "tiny"))
    engine.dispose()
    assert best is not None and plan.trial.number == best.number
    assert plan.epochs == best.best_epoch and plan.seeds == (best.seed,)

    [result] = run_evaluation(plan, url, device="cpu")
    assert len(calls) == 1
    [row] = evaluations(url)
    assert row.trial_id == best.id and row.seed == best.seed and row.epochs == best.best_epoch
    assert 0.0 <= row.test_acc <= 1.0 and row.test_loss > 0 and row.seconds > 0
    assert (row.test_acc, row.test_loss) == (result.test_acc, result.test_loss)
    assert [p["epoch"] for p in row.curve] == list(range(1, row.epochs + 1))
    assert set(row.curve[0]) == {"epoch", "train_loss", "train_acc", "lr", "seconds"}
    assert row.created_at is not None

    # the final weights: a plain state dict that loads into the trial's model
    path = Path(row.checkpoint_path)
    assert path == final_checkpoint_path(plan.checkpoint_dir, "tiny",
                                         best.number, best.seed)
    assert path.name == f"final-trial-{best.number}-seed-{best.seed}.pt"
    assert path.parent.name == "tiny"
    state = torch.load(path, weights_only=True)
    model = build_model(plan.params, (1, 28, 28))
    model.load_state_dict(state)
    assert count_parameters(model) == best.n_params


def test_evaluate_cli_with_two_seeds_prints_mean_and_std(
        url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_test_loads(monkeypatch)
    code, out, err = hps(capsys, monkeypatch, "evaluate", "tiny", "--trial", "1", "--epochs",
                         "2", "--seeds", "2", "--db", url, "--device", "cpu", "--threads", "1")
    assert code == 0, err
    rows = evaluations(url)
    assert [(r.seed, r.epochs) for r in rows] == [(1, 2), (2, 2)]  # from trial 1's seed
    assert len(calls) == 2  # one test pass per seed
    accs = [r.test_acc for r in rows]
    mean = sum(accs) / 2
    std = (sum((a - mean) ** 2 for a in accs)) ** 0.5  # sample std of two values
    assert f"test acc (final): {mean:.4f} ± {std:.4f} (mean ± std over 2 seeds" in out
    assert "seed 1: test acc" in out and "seed 2: test acc" in out

    # a third seed later: the two stored results are reused, only the new seed trains
    calls.clear()
    code, out, err = hps(capsys, monkeypatch, "evaluate", "tiny", "--trial", "1", "--epochs",
                         "2", "--seeds", "3", "--db", url, "--device", "cpu", "--threads", "1")
    assert code == 0, err
    assert len(evaluations(url)) == 3 and len(calls) == 1
    assert out.count("stored earlier") == 2

    # the query commands show it, apart from the validation accuracy
    code, out, err = hps(capsys, monkeypatch, "trials", "tiny", "--format", "json", "--db", url)
    assert code == 0, err
    by_number = {r["number"]: r for r in json.loads(out)}
    test = by_number[1]["test_acc_final"]
    assert test["seeds"] == 3 and test["epochs"] == 2
    assert test["mean"] == pytest.approx(sum(r.test_acc for r in evaluations(url)) / 3)
    assert by_number[0]["test_acc_final"] is None
    assert by_number[1]["best_val_acc"] == stored_trials(url, "tiny")[1].value  # kept apart
    code, out, err = hps(capsys, monkeypatch, "trials", "tiny", "--db", url)
    assert code == 0 and "test acc (final)" in out and "best val acc" in out and "±" in out
    code, out, err = hps(capsys, monkeypatch, "compare", "tiny", "--format", "json", "--db",
                         url)
    assert code == 0, err
    [study] = json.loads(out)
    assert study["tested_trial"] == 1 and study["test_acc_final"]["seeds"] == 3


def test_an_unwritable_weights_folder_stops_a_retraining_but_not_stored_results(
        url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    args = ("evaluate", "tiny", "--trial", "1", "--epochs", "1", "--db", url, "--device", "cpu",
            "--threads", "1")
    assert hps(capsys, monkeypatch, *args)[0] == 0
    engine = make_engine(url)  # the folder the study's final weights go to is now unwritable
    with Session(engine) as session, session.begin():
        study = session.scalars(select(Study).where(Study.name == "tiny")).one()
        study.settings = {**study.settings, "workers": {**study.settings["workers"],
                                                        "checkpoint_dir": "/proc/hps"}}
    engine.dispose()
    code, out, err = hps(capsys, monkeypatch, *args)  # stored: shown, nothing to write
    assert code == 0, err
    assert "stored earlier" in out
    code, out, err = hps(capsys, monkeypatch, *args, "--seeds", "2")  # seed 1 would train
    assert code == 2
    assert err.strip() == "hpsearch: error: cannot write final weights to /proc/hps/tiny: " \
        "No such file or directory"
    assert len(evaluations(url)) == 1


def test_best_and_report_show_the_test_accuracy(url: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, _ = hps(capsys, monkeypatch, "best", "tiny", "--format", "md", "--db", url)
    assert code == 0 and "test acc (final)" not in out  # nothing evaluated yet
    plan = plan_evaluation("tiny", url, epochs=1)
    [result] = run_evaluation(plan, url, device="cpu")
    code, out, err = hps(capsys, monkeypatch, "best", "tiny", "--format", "md", "--db", url)
    assert code == 0, err
    assert f"| test acc (final) | {result.test_acc:.4f} (1 seed) |" in out
    code, out, err = hps(capsys, monkeypatch, "best", "tiny", "--format", "json", "--db", url)
    assert json.loads(out)["test_acc_final"]["mean"] == result.test_acc
    report = tmp_path / "report.html"
    code, out, err = hps(capsys, monkeypatch, "report", "tiny", "-o", str(report), "--db", url)
    assert code == 0, err
    assert "test acc (final)" in report.read_text()


def test_study_never_reads_the_test_split_but_evaluate_does_once_per_seed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*_args, **_kwargs):
        raise AssertionError("the test split was read during a study or before every choice "
                             "was fixed")

    real_synthetic = data_mod.synthetic_raw

    def synthetic_train_only(n: int, seed: int, *args, **kwargs):
        if seed != 0:  # seed 1 makes the synthetic test images
            raise AssertionError("synthetic test images were made during a study")
        return real_synthetic(n, seed, *args, **kwargs)

    monkeypatch.setattr(data_mod, "load_test_split", forbidden)
    monkeypatch.setattr(data_mod, "synthetic_raw", synthetic_train_only)
    url = f"sqlite:///{tmp_path / 'h.db'}"
    run_in_process(write_tiny_study(tmp_path, "guarded", n_trials=2, epochs=2,
                                    heartbeat=(1, 120)), url, device="cpu")
    trials = stored_trials(url, "guarded")
    assert [t.state for t in trials] == ["complete", "complete"]  # a read would fail a trial
    assert all(t.reason is None for t in trials)

    # --epochs auto chooses the length on a held-out slice of the training set, no test read
    auto = plan_evaluation("guarded", url, epochs="auto", device="cpu")
    assert auto.auto is not None and auto.epochs == auto.auto.epochs

    # every choice of an ensemble (members, weights by greedy selection on validation
    # predictions, lengths) is made while reading the test split still fails, and frozen
    plan = plan_ensemble("guarded", url, k=2, selection="greedy", epochs=1, seeds=2,
                         device="cpu")
    assert plan.val_acc is not None and plan.members
    with pytest.raises(AttributeError):
        plan.members = ()  # type: ignore[misc]

    # the same patching point does see evaluate's reads: exactly one per seed
    monkeypatch.undo()
    calls = count_test_loads(monkeypatch)
    run_evaluation(plan_evaluation("guarded", url, epochs=1, seeds=2), url, device="cpu")
    assert len(calls) == 2

    # running the plan reads the test split once per seed, after that seed's retrainings,
    # and stores exactly the planned ensemble
    events: list[str] = []
    real_fit, real_test = train_mod.fit, data_mod.load_test_split
    monkeypatch.setattr(train_mod, "fit",
                        lambda *a, **k: events.append("train") or real_fit(*a, **k))
    monkeypatch.setattr(data_mod, "load_test_split",
                        lambda *a, **k: events.append("test") or real_test(*a, **k))
    run_ensemble(plan, url, device="cpu")
    # per seed: the retrainings (the best trial's weights for both seeds were stored by the
    # evaluation above, so it is reloaded), then one test read
    per_seed = ["train"] * (len(plan.retrained) - 1) + ["test"]
    assert events == per_seed * 2
    ensembles = ensemble_rows(url)
    assert [r.seed for r in ensembles] == list(plan.seeds)
    assert {tuple(m["trial"] for m in r.members) for r in ensembles} == {
        tuple(m.trial.number for m in plan.members)}


def test_an_hours_budget_reads_the_test_split_once_per_seed_after_every_choice(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`hpsearch run` with an hours budget trains its final models itself: its workers never
    read the test split (the test above), and the run reads it once per seed, after the search
    has ended and the ensemble's members are fixed."""
    events: list[str] = []

    def noting(module: object, name: str, event: str) -> None:
        real = getattr(module, name)

        def noted(*args, **kwargs):
            if event == "test":  # a read comes before its result, the other events after
                events.append(event)
                return real(*args, **kwargs)
            out = real(*args, **kwargs)
            events.append(event)
            return out
        monkeypatch.setattr(module, name, noted)

    noting(launcher, "supervise", "search over")
    noting(ensemble_mod, "plan_ensemble", "members fixed")
    noting(train_mod, "fit", "train")
    noting(data_mod, "load_test_split", "test")
    path = write_tiny_study(tmp_path, "hours", n_trials=3, epochs=2)
    path.write_text(path.read_text().replace(
        "max_epochs = 2", "max_epochs = 2\nhours = 1\nfinal = { seeds = 2, ensemble = 2 }"))
    url = f"sqlite:///{tmp_path / 'h.db'}"
    code, out, err = hps(capsys, monkeypatch, "run", str(path), "--db", url, "--threads", "1",
                         "--device", "cpu")
    assert code == 0, err
    # per seed: the two members retrained, then the one test read
    assert events == ["search over", "members fixed"] + ["train", "train", "test"] * 2
    assert [r.seed for r in ensemble_rows(url)] == [0, 1]
    assert "hours budget 1:00:00: search, then the final models (an ensemble of the 2 best " \
        "trials x 2 seed(s)" in out
    # each progress line says where the budget stands, the last one what was planned and used
    assert re.search(r"finished \d+/3 .*  budget 1:00:00: search 0:00:\d\d of \d:\d\d:\d\d "
                     r"planned, final (~0:\d\d:\d\d|not yet measured), left 0:\d\d:\d\d", out)
    assert re.search(r"^budget 1:00:00: search planned \d:\d\d:\d\d, used 0:\d\d:\d\d; final "
                     r"planned 0:\d\d:\d\d, used 0:\d\d:\d\d; used 0:\d\d:\d\d \(\d+\.\d%\), "
                     r"left 0:\d\d:\d\d$", out, re.MULTILINE)
    # the limits are cleared for later workers; what was planned and used stays on the study
    study = optuna.load_study(study_name="hours", storage=url)
    assert study._storage.get_study_system_attrs(study._study_id)[BUDGET_LIMITS_KEY] is None
    use = study.user_attrs[BUDGET_USE_KEY]
    assert use["final_used_s"] > 0 and use["hours_s"] == 3600
    report = tmp_path / "report.html"
    code, _, err = hps(capsys, monkeypatch, "report", "hours", "-o", str(report), "--db", url)
    assert code == 0, err
    assert "hours budget: planned and used" in report.read_text()


def test_mlp_baseline_trains_in_a_study(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'h.db'}"
    path = write_tiny_study(tmp_path, "mlp", n_trials=2, epochs=2,
                            extra_space='model = "mlp"\nmlp_width = 32\nactivation = "relu"')
    # the Mixer's own dimensions never act on an MLP: a study that searched them is refused
    mixer_only = ("patch_size", "hidden_dim", "token_mlp_dim", "channel_mlp_dim")
    path.write_text("\n".join(line for line in path.read_text().splitlines()
                               if not line.startswith(mixer_only)))
    run_in_process(path, url, device="cpu")
    trials = stored_trials(url, "mlp")
    assert [t.state for t in trials] == ["complete", "complete"]
    mlp_params = count_parameters(build_model(
        TrialParams(model="mlp", mlp_width=32, mlp_layers=1), (1, 28, 28)))
    assert mlp_params == 784 * 32 + 32 + 32 * 10 + 10
    assert all(t.n_params == mlp_params and t.epochs_run == 2 for t in trials)
    assert max(t.value for t in trials) > 0.5  # learns the synthetic classes (chance 0.1)


def test_plan_errors_are_one_line(url: str) -> None:
    with pytest.raises(HpsearchError, match="has no trial 7"):
        plan_evaluation("tiny", url, trial=7)
    with pytest.raises(HpsearchError, match="unknown study 'nope'"):
        plan_evaluation("nope", url)


def test_schema_upgrade_downgrade_and_cascade(db_url: str) -> None:
    upgrade(db_url)
    assert schema_drift(db_url) == []
    engine = make_engine(db_url)
    try:
        assert "hps_evaluation" in inspect(engine).get_table_names()
        with Session(engine) as session, session.begin():
            config = parse_study({"study": {"name": "s"}})
            study = Study(name="s", optuna_study_id=1, spec=config.spec_json(),
                          settings=config.settings_json(), dataset="synthetic")
            trial = Trial(study=study, number=0, optuna_trial_id=1, state="complete",
                          params={}, seed=0, worker="h:1")
            session.add(Evaluation(trial=trial, seed=0, epochs=1, test_acc=0.5, test_loss=1.0,
                                   curve=[], checkpoint_path="x.pt", seconds=1.0))
        with Session(engine) as session, session.begin():
            session.execute(delete(Trial))
        with Session(engine) as session:
            assert session.scalar(select(func.count()).select_from(Evaluation)) == 0
    finally:
        engine.dispose()
    downgrade(db_url, "0001")
    engine = make_engine(db_url)
    try:
        assert "hps_evaluation" not in inspect(engine).get_table_names()
    finally:
        engine.dispose()
    upgrade(db_url)
    assert schema_drift(db_url) == []


def test_training_without_a_validation_split() -> None:
    """An empty val split (the final retraining) skips validation: nan metrics and no
    divergence check on them."""
    data = data_mod.load_full_train(data_mod.DataOptions(dataset="synthetic", synthetic_size=100))
    assert len(data.val) == 0
    params = TrialParams(patch_size=14, hidden_dim=16, token_mlp_dim=8, channel_mlp_dim=16,
                         scheduler="step", epochs=4, batch_size=50, precision="fp32")
    from hpsearch.trainer.loop import fit

    result = fit(params, data, device="cpu").run_to_end()
    assert [m.epoch for m in result.history] == [1, 2, 3, 4]
    assert all(math.isnan(m.val_acc) and math.isnan(m.val_loss) for m in result.history)
    assert all(math.isfinite(m.train_loss) for m in result.history)
