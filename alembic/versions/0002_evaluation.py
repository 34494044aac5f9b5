"""Final evaluations: retrainings on train + validation, scored once on the test set.

Revision ID: 0002
Revises: 0001
Create Date: 2025-12-01

Written by hand like 0001 (a snapshot, not imported from hpsearch.db.models). Constraint names
follow the models' naming convention.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "hps_evaluation",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("trial_id", sa.Integer(), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("epochs", sa.Integer(), nullable=False),
        sa.Column("test_acc", sa.Float(), nullable=False),
        sa.Column("test_loss", sa.Float(), nullable=False),
        sa.Column("curve", sa.JSON(), nullable=False),
        sa.Column("checkpoint_path", sa.Text(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_hps_evaluation"),
        sa.ForeignKeyConstraint(["trial_id"], ["hps_trial.id"], ondelete="CASCADE",
                                name="fk_hps_evaluation_trial_id_hps_trial"),
        # one result per trial, seed and epoch count; also the index for a trial's results
        sa.UniqueConstraint("trial_id", "seed", "epochs",
                            name="uq_hps_evaluation_trial_seed_epochs"),
    )


def downgrade() -> None:
    op.drop_table("hps_evaluation")
