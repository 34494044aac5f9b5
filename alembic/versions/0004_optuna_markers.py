"""Mark the Optuna study behind every study row (no schema change).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30

Our rows are tied to Optuna's study by id, but SQLite gives a study deleted and re-created in
Optuna the old id back (and its trials the old trial ids), so from this revision on the Optuna
study carries a system attribute naming our row (hpsearch.db.optuna_tables.MARKER_KEY), and a
study without it is not ours. Upgrading marks the Optuna study of each existing row whose latest
trial still matches it; a row whose Optuna study was already deleted or re-created stays
unmarked and is reported as such. Downgrading removes the markers.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


# the columns this revision reads, as they are at this revision
study = sa.table("hps_study", sa.column("id", sa.Integer), sa.column("name", sa.String),
                 sa.column("optuna_study_id", sa.Integer), sa.column("created_at", sa.DateTime))


def upgrade() -> None:
    from hpsearch.db import optuna_tables as ot
    from hpsearch.db.optuna_link import latest_trial_matches, row_marker

    conn = op.get_bind()
    optuna = ot.optuna_studies(conn)  # empty when Optuna's tables do not exist yet
    for row in conn.execute(sa.select(study)).all():
        theirs = optuna.get(row.optuna_study_id)
        if (theirs is not None and theirs.name == row.name and theirs.marker is None
                and latest_trial_matches(conn, row)):
            ot.set_marker(conn, row.optuna_study_id, row_marker(row.id, row.created_at))


def downgrade() -> None:
    from hpsearch.db import optuna_tables as ot

    conn = op.get_bind()
    if ot.has_optuna_tables(conn):
        attrs = ot.study_system_attributes
        conn.execute(sa.delete(attrs).where(attrs.c.key == ot.MARKER_KEY))
