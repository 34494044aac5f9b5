"""Initial hpsearch schema: one row per study, per trial, per epoch.

Revision ID: 0001
Revises:
Create Date: 2025-11-24

A snapshot written by hand, not imported from hpsearch.db.models: later model changes must not
change what this revision creates. Constraint names follow the models' naming convention.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "hps_study",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(512), nullable=False),
        sa.Column("optuna_study_id", sa.Integer(), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("dataset", sa.String(64), nullable=False),
        sa.Column("n_trials", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_hps_study"),
        sa.UniqueConstraint("name", name="uq_hps_study_name"),
    )
    op.create_table(
        "hps_trial",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("optuna_trial_id", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("best_epoch", sa.Integer(), nullable=True),
        sa.Column("epochs_run", sa.Integer(), nullable=False),
        sa.Column("n_params", sa.Integer(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("seconds", sa.Float(), nullable=True),
        sa.Column("worker", sa.String(255), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("retried_from", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_hps_trial"),
        sa.ForeignKeyConstraint(["study_id"], ["hps_study.id"], ondelete="CASCADE",
                                name="fk_hps_trial_study_id_hps_study"),
        sa.UniqueConstraint("study_id", "number", name="uq_hps_trial_study_number"),
    )
    # leaderboards (best value per study) and progress counts (trials per state)
    op.create_index("ix_hps_trial_study_value", "hps_trial", ["study_id", "value"])
    op.create_index("ix_hps_trial_study_state", "hps_trial", ["study_id", "state"])
    op.create_table(
        "hps_epoch",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("trial_id", sa.Integer(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("train_loss", sa.Float(), nullable=False),
        sa.Column("train_acc", sa.Float(), nullable=False),
        sa.Column("val_loss", sa.Float(), nullable=False),
        sa.Column("val_acc", sa.Float(), nullable=False),
        sa.Column("lr", sa.Float(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("images_per_s", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_hps_epoch"),
        sa.ForeignKeyConstraint(["trial_id"], ["hps_trial.id"], ondelete="CASCADE",
                                name="fk_hps_epoch_trial_id_hps_trial"),
        # also the index for reading one trial's curve
        sa.UniqueConstraint("trial_id", "epoch", name="uq_hps_epoch_trial_epoch"),
    )


def downgrade() -> None:
    op.drop_table("hps_epoch")
    op.drop_index("ix_hps_trial_study_state", table_name="hps_trial")
    op.drop_index("ix_hps_trial_study_value", table_name="hps_trial")
    op.drop_table("hps_trial")
    op.drop_table("hps_study")
