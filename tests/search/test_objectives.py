"""The objective the user chooses: val_loss minimised, and multi-objective studies with their
Pareto front in `best --pareto`, the JSON export and the report.

The front is checked against dominance computed here from the stored epochs, independently of
hpsearch.objectives; a real (tiny, synthetic) run checks the values Optuna was handed.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import optuna
import pytest
from sqlalchemy import select, update

from hpsearch.db.engine import make_engine
from hpsearch.db.models import Epoch, Study, Trial
from hpsearch.objectives import ObjectiveSpec, pareto_front
from tests.helpers import hps
from tests.recorded_study import build_recorded_study
from tests.study_files import write_tiny_study

OBJECTIVES = ["val_acc:max", "params:min", "seconds_per_epoch:min"]
# 40 trials: mostly complete, some pruned, failed and running (never on the front)
PLAN = tuple(("pruned", 2) if i % 7 == 3 else ("failed", 0) if i == 11 else
             ("running", 1) if i == 39 else ("complete", 4) for i in range(40))


def _multi_objective(url: str, name: str) -> None:
    """A recorded study turned multi-objective: accuracies rounded to 2 places and parameter
    counts and epoch times drawn from a few values, so that ties (which neither dominate nor
    are dominated) are common."""
    build_recorded_study(url, name, plan=PLAN)
    rng = random.Random(name)
    engine = make_engine(url)
    with engine.begin() as conn:
        spec, settings = conn.execute(select(Study.spec, Study.settings)
                                      .where(Study.name == name)).one()
        conn.execute(update(Study).where(Study.name == name).values(
            spec={**spec, "objectives": OBJECTIVES},
            settings={**settings, "pruner": "none", "pruner_options": {}}))
        for trial_id, in conn.execute(select(Trial.id)):
            conn.execute(update(Epoch).where(Epoch.trial_id == trial_id).values(
                val_acc=Epoch.val_acc * 0 + rng.choice([0.80, 0.85, 0.86, 0.90, 0.91]) - 0.02
                * (4 - Epoch.epoch), seconds=rng.choice([1.0, 2.0, 3.0])))
            best = conn.execute(select(Epoch.val_acc, Epoch.epoch).where(
                Epoch.trial_id == trial_id).order_by(Epoch.val_acc.desc(), Epoch.epoch)).first()
            conn.execute(update(Trial).where(Trial.id == trial_id).values(
                n_params=rng.choice([10_000, 20_000, 40_000]),
                value=best[0] if best else None, best_epoch=best[1] if best else None))
    engine.dispose()


def _stored_values(url: str, name: str) -> dict[int, tuple[float, int, float]]:
    """(best val_acc, parameters, mean epoch seconds) of each complete trial, read here."""
    engine = make_engine(url)
    out: dict[int, tuple[float, int, float]] = {}
    with engine.connect() as conn:
        for trial in conn.execute(select(Trial).join(Study).where(Study.name == name,
                                                                  Trial.state == "complete")):
            epochs = conn.execute(select(Epoch.val_acc, Epoch.seconds)
                                  .where(Epoch.trial_id == trial.id)).all()
            out[trial.number] = (max(e.val_acc for e in epochs), trial.n_params,
                                 sum(e.seconds for e in epochs) / len(epochs))
    engine.dispose()
    return out


def _dominated(values: dict[int, tuple[float, int, float]]) -> set[int]:
    """Every trial some other trial beats: no worse in all three objectives (accuracy up,
    the other two down) and better in one. Pairwise, the plain definition."""
    def no_worse(a: tuple, b: tuple) -> bool:
        return a[0] >= b[0] and a[1] <= b[1] and a[2] <= b[2]

    return {n for n, v in values.items()
            if any(no_worse(w, v) and w != v for m, w in values.items() if m != n)}


@pytest.fixture
def multi(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'multi.db'}"
    _multi_objective(url, "multi")
    return url


def test_pareto_front_holds_no_dominated_trial(multi: str, capsys, monkeypatch) -> None:
    code, out, err = hps(capsys, monkeypatch, "best", "multi", "--pareto", "-f", "json",
                         "--db", multi)
    assert code == 0, err
    doc = json.loads(out)
    values = _stored_values(multi, "multi")
    dominated = _dominated(values)
    front = [row["number"] for row in doc["front"]]
    assert dominated and len(front) >= 2  # the data makes both sides non-trivial
    assert not set(front) & dominated, "a dominated trial is on the front"
    assert set(front) == set(values) - dominated  # and every non-dominated one is
    assert doc["objectives"] == OBJECTIVES and doc["candidates"] == len(values)
    for row in doc["front"]:  # the values shown are the stored ones
        assert (row["best_val_acc"], row["n_params"]) == values[row["number"]][:2]
        assert row["seconds_per_epoch"] == pytest.approx(values[row["number"]][2])
    # the chosen trial: the best accuracy, ties to fewer parameters, faster epochs, number
    chosen = min(values, key=lambda n: (-values[n][0], values[n][1], values[n][2], n))
    assert doc["chosen"] == chosen and chosen in front
    assert [row["number"] for row in doc["front"] if row["is_chosen"]] == [chosen]
    # `best` (what evaluate and the report use) is that same trial
    code, out, _ = hps(capsys, monkeypatch, "best", "multi", "-f", "json", "--db", multi)
    assert json.loads(out)["number"] == chosen
    code, out, _ = hps(capsys, monkeypatch, "best", "multi", "--pareto", "--db", multi)
    assert f"{len(front)} of {len(values)} complete trials are on the front" in out


def test_front_matches_plain_dominance_on_random_points() -> None:
    """The sorted sweep of hpsearch.objectives against the pairwise definition, on many random
    point sets with ties and both directions."""
    specs = (ObjectiveSpec("val_acc", "max"), ObjectiveSpec("params", "min"),
             ObjectiveSpec("seconds_per_epoch", "max"))
    rng = random.Random(0)
    for _ in range(300):
        points = [(i, (rng.randint(0, 4), rng.randint(0, 4), rng.randint(0, 4)))
                  for i in range(rng.randint(1, 25))]

        def beats(a: tuple, b: tuple) -> bool:
            return a != b and a[0] >= b[0] and a[1] <= b[1] and a[2] >= b[2]

        expected = [i for i, v in points if not any(beats(w, v) for _, w in points)]
        assert pareto_front(points, specs) == expected


def test_export_and_trials_carry_every_objective(multi: str, capsys, monkeypatch) -> None:
    code, out, err = hps(capsys, monkeypatch, "export", "multi", "-f", "json", "--db", multi)
    assert code == 0, err
    values = _stored_values(multi, "multi")
    rows = {r["number"]: r for r in json.loads(out)}
    for number, (acc, n_params, seconds) in values.items():
        assert rows[number]["best_val_acc"] == acc and rows[number]["n_params"] == n_params
        assert rows[number]["seconds_per_epoch"] == pytest.approx(seconds)
    code, out, _ = hps(capsys, monkeypatch, "trials", "multi", "-f", "csv", "--db", multi)
    # every objective first, the size among them (no second n_params column), then the mark
    header = out.splitlines()[0]
    assert header.startswith("number,state,best_val_acc,n_params,seconds_per_epoch,is_best,")
    assert header.split(",").count("n_params") == 1


def test_report_draws_the_front_with_the_chosen_trial(multi: str, tmp_path: Path, capsys,
                                                      monkeypatch) -> None:
    code, out, err = hps(capsys, monkeypatch, "best", "multi", "--pareto", "-f", "json",
                         "--db", multi)
    doc = json.loads(out)
    report = tmp_path / "report.html"
    code, _, err = hps(capsys, monkeypatch, "report", "multi", "-o", str(report), "--db", multi)
    assert code == 0, err
    page = report.read_text()
    spec = re.search(r'data-target="s1-pareto">(.*?)</script>', page, re.S)
    assert spec, "no Pareto figure in the report"
    traces = json.loads(spec.group(1))["data"]
    by_name: dict[str, set[int]] = {}
    for trace in traces:
        by_name.setdefault(trace["name"], set()).update(trace["customdata"])
    assert by_name["Pareto front"] == {row["number"] for row in doc["front"]}
    assert by_name["chosen trial"] == {doc["chosen"]}
    assert by_name["complete trials"].isdisjoint(by_name["Pareto front"])
    assert "pruning is off" in page


def test_val_loss_and_multi_objective_runs(tmp_path: Path, capsys, monkeypatch) -> None:
    """Real trials on synthetic data: a val_loss study minimises the lowest validation loss
    of each trial; a multi-objective study hands Optuna every objective and, with pruning off,
    still each epoch's first objective (the dashboard's curves), and Optuna's own front
    (study.best_trials) is ours."""
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    path = write_tiny_study(tmp_path, "loss", n_trials=3, epochs=2)
    path.write_text(path.read_text().replace("seed = 0", 'seed = 0\nmetric = "val_loss"'))
    code, _, err = hps(capsys, monkeypatch, "run", str(path), "--db", url, "--threads", "1")
    assert code == 0, err
    study = optuna.load_study(study_name="loss", storage=url)
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    engine = make_engine(url)
    with engine.connect() as conn:
        lowest = {n: v for n, v in conn.execute(
            select(Trial.number, Trial.value).join(Study).where(Study.name == "loss"))}
        for trial in study.trials:
            losses = conn.scalars(select(Epoch.val_loss).join(Trial).join(Study).where(
                Study.name == "loss", Trial.number == trial.number)).all()
            assert trial.value == min(losses) == lowest[trial.number]
    code, out, _ = hps(capsys, monkeypatch, "best", "loss", "-f", "json", "--db", url)
    assert json.loads(out)["number"] == min(lowest, key=lambda n: (lowest[n], n))
    assert json.loads(out)["best_val_loss"] == min(lowest.values())
    code, out, _ = hps(capsys, monkeypatch, "trials", "loss", "-f", "json", "--db", url)
    assert [r["best_val_loss"] for r in json.loads(out)] == sorted(lowest.values())

    path = write_tiny_study(tmp_path, "both", n_trials=5, epochs=2, sampler="tpe")
    path.write_text(path.read_text().replace(
        "seed = 0", 'seed = 0\nobjectives = ["val_acc:max", "params:min"]'))
    code, out, err = hps(capsys, monkeypatch, "run", str(path), "--db", url, "--threads", "1")
    assert code == 0, err
    assert "objectives val_acc:max, params:min" in out + err and "pruned on" not in out + err
    study = optuna.load_study(study_name="both", storage=url)
    assert study.metric_names == ["val_acc", "params"]
    with engine.connect() as conn:
        for trial in study.trials:
            curve = dict(conn.execute(select(Epoch.epoch, Epoch.val_acc).join(Trial).join(
                Study).where(Study.name == "both", Trial.number == trial.number)).all())
            assert trial.intermediate_values == curve
    code, out, _ = hps(capsys, monkeypatch, "best", "both", "--pareto", "-f", "json", "--db", url)
    doc = json.loads(out)
    assert {r["number"] for r in doc["front"]} == {t.number for t in study.best_trials}
    for row in doc["front"]:
        assert [row["best_val_acc"], row["n_params"]] == study.trials[row["number"]].values
    engine.dispose()


def test_a_multi_objective_study_is_pruned_on_the_objective_it_names(tmp_path: Path) -> None:
    """Pruned on `[pruner] objective` (val_loss, the second objective): each epoch's val_loss
    is the trial's intermediate value in Optuna's storage, and the median pruner stops trials
    on it. TPE runs past its start-up trials, ranking the pruned ones (Optuna's multi-objective
    TPE fails on a pruned trial with intermediate values)."""
    from tests.helpers import run_in_process

    path = tmp_path / "mo.toml"
    path.write_text("""[dry_run]
seconds_per_epoch = 0.01

[study]
name = "mo"
objectives = ["val_acc:max", "val_loss:min"]
pruner = "median"
n_trials = 14
seed = 0

[pruner]
startup_trials = 2
objective = "val_loss"

[data]
dataset = "synthetic"

[budget]
max_epochs = 4

[workers]
checkpoint_dir = "%s"

[space]
lr = { low = 1e-5, high = 1e-1, log = true }
""" % (tmp_path / "checkpoints"))
    url = f"sqlite:///{tmp_path / 'mo.db'}"
    run_in_process(path, url)
    study = optuna.load_study(study_name="mo", storage=url)
    engine = make_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(select(Trial.number, Trial.state, Trial.reason).join(Study).where(
            Study.name == "mo")).all()
        for trial in study.trials:
            curve = dict(conn.execute(select(Epoch.epoch, Epoch.val_loss).join(Trial).join(
                Study).where(Study.name == "mo", Trial.number == trial.number)).all())
            assert trial.intermediate_values == curve
    engine.dispose()
    pruned = {number: reason for number, state, reason in rows if state == "pruned"}
    assert len(rows) == 14 and pruned, rows
    assert all(re.fullmatch(r"pruned at epoch \d \(val_loss \d\.\d{4}\)", r)
               for r in pruned.values()), pruned
    assert {t.number for t in study.trials if t.state == optuna.trial.TrialState.PRUNED} == set(
        pruned)
    # Optuna's own plot of them draws a curve per trial (optuna-dashboard 0.21 draws its plot
    # for single-objective studies only, and lists the values on each trial's page)
    figure = optuna.visualization.plot_intermediate_values(study)
    assert sorted(len(line.x) for line in figure.data) == sorted(
        len(t.intermediate_values) for t in study.trials)
