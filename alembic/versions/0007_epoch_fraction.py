"""Epoch rows say which share of the training split they trained on ([budget] rungs).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30

NULL (every row written before, and every epoch of a study without rungs) means the whole
training split.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("hps_epoch") as batch:
        batch.add_column(sa.Column("fraction", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("hps_epoch") as batch:
        batch.drop_column("fraction")
