"""Ensembles of a study's trials (`hpsearch evaluate --ensemble K`), scored once on the test set.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30

Written by hand like 0002 (a snapshot, not imported from hpsearch.db.models). Constraint names
follow the models' naming convention.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "hps_ensemble",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("selection", sa.String(16), nullable=False),
        sa.Column("members", sa.JSON(), nullable=False),
        sa.Column("members_key", sa.String(1000), nullable=False),
        sa.Column("test_acc", sa.Float(), nullable=False),
        sa.Column("test_loss", sa.Float(), nullable=False),
        sa.Column("tta", sa.String(16), nullable=True),
        sa.Column("test_acc_tta", sa.Float(), nullable=True),
        sa.Column("test_loss_tta", sa.Float(), nullable=True),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_hps_ensemble"),
        sa.ForeignKeyConstraint(["study_id"], ["hps_study.id"], ondelete="CASCADE",
                                name="fk_hps_ensemble_study_id_hps_study"),
        # one result per study, seed and ensemble; also the index for a study's ensembles
        sa.UniqueConstraint("study_id", "seed", "members_key",
                            name="uq_hps_ensemble_study_seed_members_key"),
    )


def downgrade() -> None:
    op.drop_table("hps_ensemble")
