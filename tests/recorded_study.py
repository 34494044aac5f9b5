"""A small recorded study written straight into a database, without training anything.

Rows go into our tables (hps_study, hps_trial, hps_epoch) with SQLAlchemy, and the same trials
into a real Optuna study in the same database (create_study + add_trial), so that
`optuna.load_study` works on it too. Everything is deterministic for a given name and seed.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import optuna
from sqlalchemy.orm import Session

from hpsearch.db.engine import make_engine
from hpsearch.db.migrate import upgrade
from hpsearch.db.models import Epoch, Study, Trial
from hpsearch.db.optuna_link import row_marker
from hpsearch.db.optuna_tables import set_marker
from hpsearch.search.study_file import NAME_PATTERN, parse_study

MAX_EPOCHS = 4
START = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
# state and epochs run of each trial, in trial-number order
PLAN: tuple[tuple[str, int], ...] = (
    ("complete", 4), ("pruned", 2), ("complete", 4), ("failed", 0),
    ("complete", 4), ("pruned", 1), ("complete", 4), ("running", 2),
)
REASONS = {
    "pruned": "pruned by MedianPruner at epoch {epochs}: val acc below the median",
    "failed": "RuntimeError: out of memory before epoch {epochs} finished",
}
OPTIMIZERS = ("adam", "adamw", "sgd")
PATCHES = (4, 7)


def study_config(name: str, n_trials: int) -> dict[str, Any]:
    """A valid study TOML (as a dict); a hostile name is stored only in hps_study.name."""
    return {
        "study": {"name": name if NAME_PATTERN.fullmatch(name) else "recorded", "sampler": "tpe",
                  "pruner": "median", "n_trials": n_trials, "seed": 0},
        "data": {"dataset": "fashion-mnist", "val_fraction": 0.1, "subset": 2000},
        "budget": {"max_epochs": MAX_EPOCHS},
        "space": {
            "lr": {"low": 1e-4, "high": 1e-1, "log": True},
            "hidden_dim": {"low": 32, "high": 256, "log": True},
            "optimizer": list(OPTIMIZERS),
            "patch_size": list(PATCHES),
            "dropout": {"low": 0.0, "high": 0.5},
            "batch_size": 128,
            "scheduler": "cosine",
        },
    }


def distributions() -> dict[str, optuna.distributions.BaseDistribution]:
    d = optuna.distributions
    return {
        "lr": d.FloatDistribution(1e-4, 1e-1, log=True),
        "hidden_dim": d.IntDistribution(32, 256, log=True),
        "optimizer": d.CategoricalDistribution(OPTIMIZERS),
        "patch_size": d.CategoricalDistribution(PATCHES),
        "dropout": d.FloatDistribution(0.0, 0.5),
    }


@dataclass(frozen=True)
class RecordedStudy:
    name: str
    url: str
    n_trials: int
    best_number: int  # the complete trial with the highest value


def create_schema(url: str) -> None:
    """Our tables at the current migration head (what the runner creates)."""
    upgrade(url)


def _curve(rng: random.Random, epochs: int) -> list[dict[str, float]]:
    ceiling = rng.uniform(0.70, 0.92)
    rows = []
    for epoch in range(1, epochs + 1):
        val_acc = round(ceiling * (1 - 0.5 ** (epoch + 1)) + rng.uniform(-0.01, 0.01), 6)
        rows.append({
            "epoch": epoch,
            "train_loss": round(1.6 * 0.7 ** epoch + rng.uniform(0, 0.02), 6),
            "train_acc": round(min(0.99, val_acc + rng.uniform(0.0, 0.03)), 6),
            "val_loss": round(1.7 * 0.72 ** epoch + rng.uniform(0, 0.02), 6),
            "val_acc": val_acc,
            "lr": round(1e-3 * 0.5 * (1 + math.cos(math.pi * (epoch - 1) / MAX_EPOCHS)), 9),
            "seconds": round(rng.uniform(2.0, 4.0), 3),
            "images_per_s": round(rng.uniform(4000, 6000), 1),
        })
    return rows


def build_recorded_study(url: str, name: str = "fmnist-demo", *, seed: int = 0,
                         plan: tuple[tuple[str, int], ...] = PLAN) -> RecordedStudy:
    """Write one study (our rows and Optuna's) into the database at `url` and describe it."""
    create_schema(url)
    rng = random.Random(f"{name}/{seed}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ostudy = optuna.create_study(study_name=name, storage=url, direction="maximize")
    engine = make_engine(url)
    best: tuple[float, int] | None = None
    config = study_config(name, len(plan))
    parsed = parse_study(config)  # rows as the runner writes them: the stored spec
    with Session(engine) as session, session.begin():
        study = Study(name=name, optuna_study_id=ostudy._study_id, dataset="fashion-mnist",
                      spec=parsed.spec_json(), settings=parsed.settings_json(),
                      created_at=START - timedelta(minutes=1))
        session.add(study)
        clock = START
        for number, (state, epochs) in enumerate(plan):
            params = {"lr": round(10 ** rng.uniform(-4, -1), 8),
                      "hidden_dim": rng.randint(32, 256), "optimizer": rng.choice(OPTIMIZERS),
                      "patch_size": rng.choice(PATCHES), "dropout": round(rng.uniform(0, .5), 4)}
            curve = _curve(rng, epochs)
            peak = max(curve, key=lambda row: row["val_acc"], default={})
            seconds = round(sum(row["seconds"] for row in curve), 3)
            finished = clock + timedelta(seconds=seconds) if state != "running" else None
            optuna_id = _add_optuna_trial(ostudy, state, params, curve, clock, finished)
            trial = Trial(
                study=study, number=number, optuna_trial_id=optuna_id, state=state,
                params=parsed.resolve(lambda n, _d, p=params: p[n]), sampled=list(params),
                seed=number,
                value=peak.get("val_acc"), best_epoch=peak.get("epoch"),
                epochs_run=epochs, n_params=50_000 + 1000 * params["hidden_dim"],
                started_at=clock, finished_at=finished,
                seconds=seconds if finished else None, worker=f"host-a:{1000 + number % 2}",
                reason=REASONS[state].format(epochs=epochs) if state in REASONS else None,
                epochs=[Epoch(**row) for row in curve],
            )
            session.add(trial)
            if state == "complete" and (best is None or peak["val_acc"] > best[0]):
                best = (peak["val_acc"], number)
            clock += timedelta(seconds=seconds + 5)
        session.flush()  # the Optuna study names our row, as the runner's does
        set_marker(session.connection(), ostudy._study_id, row_marker(study.id, study.created_at))
    engine.dispose()
    assert best is not None, "a plan needs at least one complete trial"
    return RecordedStudy(name, url, len(plan), best[1])


def _add_optuna_trial(study: optuna.Study, state: str, params: dict[str, Any],
                      curve: list[dict[str, float]], started: datetime,
                      finished: datetime | None) -> int:
    """Add the trial to Optuna's tables and return its Optuna trial id."""
    states = {"complete": optuna.trial.TrialState.COMPLETE,
              "pruned": optuna.trial.TrialState.PRUNED,
              "failed": optuna.trial.TrialState.FAIL,
              "running": optuna.trial.TrialState.RUNNING}
    value = max(row["val_acc"] for row in curve) if state == "complete" else None
    trial = optuna.trial.create_trial(
        state=states[state], value=value, params=params, distributions=distributions(),
        intermediate_values={int(row["epoch"]): row["val_acc"] for row in curve},
    )
    trial.datetime_start = started.replace(tzinfo=None)
    trial.datetime_complete = finished.replace(tzinfo=None) if finished else None
    study.add_trial(trial)
    number = len(study.get_trials(deepcopy=False)) - 1
    return study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
