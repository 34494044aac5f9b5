"""Full records: every trial holds its resolved parameters, every study its search space.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30

Before this revision a trial row held only its *sampled* values, and the fixed ones lived in the
study's TOML, which every reader parsed again. Upgrading fills the new columns from each study's
stored TOML, read as that release read it, and the defaults of that release (snapshots below:
this file is history, it imports nothing from hpsearch); downgrading keeps only the sampled
values again.
Also adds notes, tags and the precision/device a trial ran with (unknown for older rows).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

study = sa.table("hps_study", sa.column("id", sa.Integer), sa.column("config", sa.JSON),
                 sa.column("space", sa.JSON))
trial = sa.table("hps_trial", sa.column("id", sa.Integer), sa.column("study_id", sa.Integer),
                 sa.column("params", sa.JSON), sa.column("sampled", sa.JSON),
                 sa.column("tags", sa.JSON))


# the integer parameters of that release; every other number was a float
INTS_AT_0002 = {"patch_size", "hidden_dim", "token_mlp_dim", "channel_mlp_dim", "num_blocks",
                "mlp_width", "mlp_layers", "batch_size", "warmup_epochs", "step_size", "epochs",
                "crop_padding"}


def _parsed(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(fixed values, space as Optuna's distribution JSON) of a stored study TOML, read as that
    release read it: in [space] a list is a choice, a {low, high} table a range, anything else
    a fixed value; [budget] max_epochs (default 10) the epochs."""
    fixed: dict[str, Any] = {"epochs": int(config.get("budget", {}).get("max_epochs", 10))}
    space: dict[str, Any] = {}
    for name, value in config.get("space", {}).items():
        if isinstance(value, list):
            space[name] = {"name": "CategoricalDistribution", "attributes": {"choices": value}}
        elif isinstance(value, dict):
            space[name] = _range(name, value)
        else:
            fixed[name] = _typed(name, value)
    return fixed, space


def _typed(name: str, value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value
    return int(value) if name in INTS_AT_0002 else float(value)


def _range(name: str, table: dict[str, Any]) -> dict[str, Any]:
    log = bool(table.get("log", False))
    if name in INTS_AT_0002:
        return {"name": "IntDistribution", "attributes": {
            "log": log, "step": int(table.get("step", 1)), "low": int(table["low"]),
            "high": int(table["high"])}}
    step = table.get("step")
    return {"name": "FloatDistribution", "attributes": {
        "step": float(step) if step is not None else None, "low": float(table["low"]),
        "high": float(table["high"]), "log": log}}


# The defaults of every parameter as the release before this revision defined them: rows of that
# release are completed with what its trainer used, not with whatever later releases default to.
DEFAULTS_AT_0002: dict[str, Any] = {
    "model": "mixer", "patch_size": 4, "hidden_dim": 128, "token_mlp_dim": 64,
    "channel_mlp_dim": 512, "num_blocks": 1, "mlp_width": 256, "mlp_layers": 1, "dropout": 0.0,
    "activation": "gelu", "init": "default", "optimizer": "adam", "lr": 0.001,
    "weight_decay": 0.0, "momentum": 0.9, "batch_size": 256, "label_smoothing": 0.0,
    "scheduler": "none", "warmup_epochs": 0, "step_size": 10, "gamma": 0.1, "epochs": 10,
    "augment": False, "crop_padding": 2, "hflip": True, "random_erasing": 0.0,
    "precision": "auto", "compile": "off",
}


def _resolved(fixed: dict[str, Any], sampled: dict[str, Any]) -> dict[str, Any]:
    return {**DEFAULTS_AT_0002, **fixed, **sampled}


def upgrade() -> None:
    with op.batch_alter_table("hps_study") as batch:
        batch.add_column(sa.Column("space", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("note", sa.Text(), nullable=True))
    with op.batch_alter_table("hps_trial") as batch:
        batch.add_column(sa.Column("sampled", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("precision", sa.String(16), nullable=True))
        batch.add_column(sa.Column("device", sa.String(64), nullable=True))
        batch.add_column(sa.Column("tags", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("note", sa.Text(), nullable=True))

    conn = op.get_bind()
    for study_id, config in conn.execute(sa.select(study.c.id, study.c.config)).all():
        fixed, space = _parsed(config or {})
        conn.execute(study.update().where(study.c.id == study_id).values(space=space))
        rows = conn.execute(sa.select(trial.c.id, trial.c.params)
                            .where(trial.c.study_id == study_id)).all()
        for trial_id, params in rows:
            sampled = dict(params or {})
            conn.execute(trial.update().where(trial.c.id == trial_id).values(
                params=_resolved(fixed, sampled), sampled=list(sampled), tags=[]))

    with op.batch_alter_table("hps_study") as batch:
        batch.alter_column("space", existing_type=sa.JSON(), nullable=False)
    with op.batch_alter_table("hps_trial") as batch:
        batch.alter_column("sampled", existing_type=sa.JSON(), nullable=False)
        batch.alter_column("tags", existing_type=sa.JSON(), nullable=False)


def downgrade() -> None:
    conn = op.get_bind()
    for trial_id, params, sampled in conn.execute(
            sa.select(trial.c.id, trial.c.params, trial.c.sampled)).all():
        params = params or {}
        conn.execute(trial.update().where(trial.c.id == trial_id).values(
            params={name: params[name] for name in (sampled or []) if name in params}))
    with op.batch_alter_table("hps_trial") as batch:
        for column in ("note", "tags", "device", "precision", "sampled"):
            batch.drop_column(column)
    with op.batch_alter_table("hps_study") as batch:
        batch.drop_column("note")
        batch.drop_column("space")
