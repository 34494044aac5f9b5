"""Mark the Optuna study behind every study row (no schema change).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30

Our rows are tied to Optuna's study by id, but SQLite gives a study deleted and re-created in
Optuna the old id back (and its trials the old trial ids), so from this revision on the Optuna
study carries a system attribute naming our row (MARKER_KEY), and a
study without it is not ours. Upgrading marks the Optuna study of each existing row whose latest
trial still matches it; a row whose Optuna study was already deleted or re-created stays
unmarked and is reported as such. Downgrading removes the markers.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


# the tables this revision reads and writes, as they are at this revision (ours and Optuna's)
study = sa.table("hps_study", sa.column("id", sa.Integer), sa.column("name", sa.String),
                 sa.column("optuna_study_id", sa.Integer), sa.column("created_at", sa.DateTime))
trial = sa.table("hps_trial", sa.column("study_id", sa.Integer), sa.column("number", sa.Integer),
                 sa.column("optuna_trial_id", sa.Integer), sa.column("sampled", sa.JSON))
optuna_studies = sa.table("studies", sa.column("study_id"), sa.column("study_name"))
optuna_trials = sa.table("trials", sa.column("trial_id"), sa.column("study_id"),
                         sa.column("number"))
optuna_params = sa.table("trial_params", sa.column("trial_id"), sa.column("param_name"))
attrs = sa.table("study_system_attributes", sa.column("study_id"), sa.column("key"),
                 sa.column("value_json"))
MARKER_KEY = "hpsearch:study_row"


def row_marker(row_id: int, created_at: datetime) -> str:
    if created_at.tzinfo is None:  # SQLite hands back naive UTC
        created_at = created_at.replace(tzinfo=UTC)
    return f"{row_id}/{created_at.astimezone(UTC).isoformat()}"


def latest_trial_matches(conn: sa.Connection, row: Any) -> bool:
    """Does our latest trial row match the Optuna trial it names, by id, study, number and
    sampled parameter names? The ids alone prove nothing, SQLite re-uses them. No trial rows:
    nothing to mix up, so yes."""
    latest = conn.execute(sa.select(trial.c.optuna_trial_id, trial.c.number, trial.c.sampled)
                          .where(trial.c.study_id == row.id)
                          .order_by(trial.c.number.desc()).limit(1)).first()
    if latest is None:
        return True
    found = conn.execute(sa.select(optuna_trials.c.number).where(
        optuna_trials.c.trial_id == latest.optuna_trial_id,
        optuna_trials.c.study_id == row.optuna_study_id)).first()
    names = conn.scalars(sa.select(optuna_params.c.param_name).where(
        optuna_params.c.trial_id == latest.optuna_trial_id)).all()
    return (found is not None and found.number == latest.number
            and set(names) == set(latest.sampled or ()))


def upgrade() -> None:
    conn = op.get_bind()
    if not sa.inspect(conn).has_table("studies"):  # Optuna's tables do not exist yet
        return
    marked = set(conn.scalars(sa.select(attrs.c.study_id).where(attrs.c.key == MARKER_KEY)))
    names = dict(conn.execute(sa.select(optuna_studies.c.study_id,
                                        optuna_studies.c.study_name)).all())
    for row in conn.execute(sa.select(study)).all():
        if (names.get(row.optuna_study_id) == row.name and row.optuna_study_id not in marked
                and latest_trial_matches(conn, row)):
            conn.execute(sa.insert(attrs).values(
                study_id=row.optuna_study_id, key=MARKER_KEY,
                value_json=json.dumps(row_marker(row.id, row.created_at))))


def downgrade() -> None:
    conn = op.get_bind()
    if sa.inspect(conn).has_table("studies"):
        conn.execute(sa.delete(attrs).where(attrs.c.key == MARKER_KEY))
