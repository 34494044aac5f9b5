"""The study stored once, resolved: a versioned spec and separate settings; the trial's seed.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06

Until this revision a study row held its study file as loaded (TOML as JSON), which readers parsed
again, each with its own defaults. Upgrading resolves each stored file once, with the defaults of
the release before this revision (written out below, never imported: this file is history), into
`spec` (what a trial means: space, fixed values, objectives, budget, seed, data) and `settings`
(sampler, pruner, n_trials, timeout, workers: what `run --update` may change), and drops `config`,
`space` and `n_trials`. Studies created before keep a space without conditions: they were
sampled flat. Each trial row gets the seed it trained with: the study's seed plus the number of
its first attempt. Downgrading writes the study file back from the two records.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | None = None
depends_on: str | None = None

study = sa.table("hps_study", sa.column("id", sa.Integer), sa.column("name", sa.String),
                 sa.column("config", sa.JSON), sa.column("space", sa.JSON),
                 sa.column("n_trials", sa.Integer), sa.column("spec", sa.JSON),
                 sa.column("settings", sa.JSON))
trial = sa.table("hps_trial", sa.column("id", sa.Integer), sa.column("study_id", sa.Integer),
                 sa.column("number", sa.Integer), sa.column("retried_from", sa.Integer),
                 sa.column("seed", sa.Integer))

# the defaults of the study file as the release before this revision read it
MEASURES = {"val_acc": "max", "val_loss": "min", "params": "min", "seconds_per_epoch": "min"}
PRUNER_OPTIONS = {"none": {}, "median": {"startup_trials": 5},
                  "successive-halving": {"reduction_factor": 4},
                  "hyperband": {"reduction_factor": 3}}
DATA = {"dataset": "fashion-mnist", "val_fraction": 0.1, "subset": None, "synthetic_size": 1200}
WORKERS = {"heartbeat_interval": 30, "grace_period": 120, "max_retry": 2,
           "checkpoint_dir": "hpsearch-checkpoints", "keep_models": 3, "gpus": [],
           "workers_per_gpu": 1}


def _objectives(table: dict[str, Any]) -> list[str]:
    if "objectives" not in table:
        metric = table.get("metric", "val_acc")
        return [f"{metric}:{MEASURES[metric]}"]
    out = []
    for item in table["objectives"]:
        measure, _, direction = item.partition(":")
        out.append(f"{measure.strip()}:{direction.strip() or MEASURES[measure.strip()]}")
    return out


def resolved(config: dict[str, Any], space: dict[str, Any], n_trials: int
             ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(spec, settings) of a stored study file; `space`: the distributions 0003 stored."""
    table = config.get("study", {})
    budget = config.get("budget", {})
    data = config.get("data", {})
    objectives = _objectives(table)
    pruner = table.get("pruner", "none" if len(objectives) > 1 else "hyperband")
    rungs = [[float(r["fraction"]), int(r["epochs"])] for r in budget.get("rungs", [])]
    max_epochs = budget.get("max_epochs", rungs[-1][1] if rungs else 10)
    fixed = {"epochs": int(max_epochs)}
    fixed |= {k: v for k, v in config.get("space", {}).items() if not isinstance(v, list | dict)}
    dry_run = config.get("dry_run")
    spec = {
        "version": 1, "space": space, "conditions": {}, "fixed": fixed,
        "objectives": objectives, "min_epochs": int(budget.get("min_epochs", 1)),
        "rungs": rungs, "seed": int(table.get("seed", 0)),
        "data": {k: data.get(k, default) for k, default in DATA.items()},
        "dry_run": (float(dry_run.get("seconds_per_epoch", 1.0))
                    if isinstance(dry_run, dict) else None),
    }
    workers = {k: config.get("workers", {}).get(k, default) for k, default in WORKERS.items()}
    workers["gpus"] = [str(g) for g in workers["gpus"]]
    timeout = table.get("timeout")
    settings = {
        "sampler": table.get("sampler", "tpe"), "pruner": pruner,
        "pruner_options": {k: config.get("pruner", {}).get(k, default)
                           for k, default in PRUNER_OPTIONS[pruner].items()},
        "n_trials": n_trials, "timeout": float(timeout) if timeout is not None else None,
        "target": table.get("target"), "hours": budget.get("hours"),
        "final": {"seeds": 1, "ensemble": 1, **budget.get("final", {})},
        "workers": workers, "data_dir": data.get("data_dir"),
    }
    return spec, settings


def study_file(name: str, spec: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """The study file (as the release before this revision stored it) of a spec and settings."""
    table = {"name": name, "sampler": settings["sampler"], "pruner": settings["pruner"],
             "objectives": spec["objectives"], "n_trials": settings["n_trials"],
             "seed": spec["seed"]}
    for key in ("timeout", "target"):
        if settings[key] is not None:
            table[key] = settings[key]
    fixed = dict(spec["fixed"])
    budget: dict[str, Any] = {"max_epochs": fixed.pop("epochs")}
    if spec["rungs"]:
        budget = {"rungs": [{"fraction": f, "epochs": e} for f, e in spec["rungs"]]}
    else:
        budget["min_epochs"] = spec["min_epochs"]
    if settings["hours"] is not None:
        budget |= {"hours": settings["hours"], "final": settings["final"]}
    data = {k: v for k, v in spec["data"].items() if v is not None}
    if settings["data_dir"] is not None:
        data["data_dir"] = settings["data_dir"]
    doc = {"study": table, "pruner": settings["pruner_options"], "budget": budget, "data": data,
           "workers": settings["workers"], "space": {**fixed, **{
               name: _as_toml(dist) for name, dist in spec["space"].items()}}}
    if spec["dry_run"] is not None:
        doc["dry_run"] = {"seconds_per_epoch": spec["dry_run"]}
    return doc


def _as_toml(dist: dict[str, Any]) -> Any:
    attributes = dist["attributes"]
    if dist["name"] == "CategoricalDistribution":
        return list(attributes["choices"])
    out = {"low": attributes["low"], "high": attributes["high"], "log": attributes["log"]}
    step = attributes.get("step")
    if step is not None and not (dist["name"] == "IntDistribution" and step == 1):
        out["step"] = step
    return out


def trial_seeds(conn: sa.Connection, study_id: int, seed: int) -> dict[int, int]:
    """Row id -> the study's seed plus the number of the trial's first attempt."""
    rows = conn.execute(sa.select(trial.c.id, trial.c.number, trial.c.retried_from)
                        .where(trial.c.study_id == study_id)).all()
    retried_from = {r.number: r.retried_from for r in rows}

    def first(number: int) -> int:
        seen = set()
        while retried_from.get(number) is not None and number not in seen:
            seen.add(number)
            number = retried_from[number]
        return number
    return {r.id: seed + first(r.number) for r in rows}


def upgrade() -> None:
    with op.batch_alter_table("hps_study") as batch:
        batch.add_column(sa.Column("spec", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("settings", sa.JSON(), nullable=True))
    with op.batch_alter_table("hps_trial") as batch:
        batch.add_column(sa.Column("seed", sa.Integer(), nullable=True))
    conn = op.get_bind()
    for row in conn.execute(sa.select(study.c.id, study.c.config, study.c.space,
                                      study.c.n_trials)).all():
        spec, settings = resolved(row.config or {}, row.space or {}, row.n_trials)
        conn.execute(study.update().where(study.c.id == row.id)
                     .values(spec=spec, settings=settings))
        for trial_id, seed in trial_seeds(conn, row.id, spec["seed"]).items():
            conn.execute(trial.update().where(trial.c.id == trial_id).values(seed=seed))
    with op.batch_alter_table("hps_study") as batch:
        batch.alter_column("spec", existing_type=sa.JSON(), nullable=False)
        batch.alter_column("settings", existing_type=sa.JSON(), nullable=False)
        for column in ("config", "space", "n_trials"):
            batch.drop_column(column)
    with op.batch_alter_table("hps_trial") as batch:
        batch.alter_column("seed", existing_type=sa.Integer(), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("hps_study") as batch:
        batch.add_column(sa.Column("config", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("space", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("n_trials", sa.Integer(), nullable=True))
    conn = op.get_bind()
    for row in conn.execute(sa.select(study.c.id, study.c.name, study.c.spec,
                                      study.c.settings)).all():
        conn.execute(study.update().where(study.c.id == row.id).values(
            config=study_file(row.name, row.spec, row.settings), space=row.spec["space"],
            n_trials=row.settings["n_trials"]))
    with op.batch_alter_table("hps_study") as batch:
        for column in ("config", "space", "n_trials"):
            batch.alter_column(column, existing_type=sa.JSON() if column != "n_trials"
                               else sa.Integer(), nullable=False)
        batch.drop_column("spec")
        batch.drop_column("settings")
    with op.batch_alter_table("hps_trial") as batch:
        batch.drop_column("seed")
