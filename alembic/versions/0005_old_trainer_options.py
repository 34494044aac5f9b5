"""Trial rows say what the old trainer ran with, now that its hard-coded options are parameters.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30

The optimiser and scheduler options became parameters with PyTorch's defaults, and some of those
differ from what the trainer used to hard-code: ReduceLROnPlateau had patience 2 and turned a gamma
of 1 into 0.1, and SGD always used Nesterov momentum when momentum > 0. A row written before has
none of these keys, so a reader would fill in today's defaults and retrain something else
(`best --format toml`, `evaluate`). Upgrading writes the values those trials actually ran with;
downgrading removes the keys again (the older code rejects unknown parameters).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None

trial = sa.table("hps_trial", sa.column("id", sa.Integer), sa.column("params", sa.JSON))
# what the trainer before this revision used, whatever the trial's optimiser and scheduler
OLD_TRAINER = {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "min_lr": 0.0,
               "plateau_metric": "val_loss", "plateau_mode": "auto", "plateau_patience": 2,
               "plateau_threshold": 1e-4, "plateau_cooldown": 0}
NEW_KEYS = (*OLD_TRAINER, "nesterov")


def _as_run(params: dict[str, Any]) -> dict[str, Any]:
    out = {**OLD_TRAINER, **params}
    out.setdefault("nesterov", float(params.get("momentum", 0.9)) > 0)
    if params.get("scheduler") == "plateau" and float(params.get("gamma", 0.1)) >= 1:
        out["gamma"] = 0.1  # the old trainer's silent replacement, now stated on the row
    return out


def upgrade() -> None:
    conn = op.get_bind()
    for trial_id, params in conn.execute(sa.select(trial.c.id, trial.c.params)).all():
        if params and "plateau_patience" not in params:
            conn.execute(trial.update().where(trial.c.id == trial_id)
                         .values(params=_as_run(params)))


def downgrade() -> None:
    conn = op.get_bind()
    for trial_id, params in conn.execute(sa.select(trial.c.id, trial.c.params)).all():
        if params and any(key in params for key in NEW_KEYS):
            conn.execute(trial.update().where(trial.c.id == trial_id).values(
                params={k: v for k, v in params.items() if k not in NEW_KEYS}))
