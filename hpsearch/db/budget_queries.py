"""What an hours budget is planned from (hpsearch.search.budget): the epoch times measured; and
what the last one planned and used (the report shows it)."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Connection, select

from hpsearch.db import optuna_tables as ot
from hpsearch.db.models import Epoch, Trial
from hpsearch.db.records import StudyInfo


def epoch_times(conn: Connection, study: StudyInfo) -> list[tuple[int, float, float, float | None]]:
    """(trial number, seconds, images_per_s, fraction) of every epoch the study's trials ran."""
    query = (select(Trial.number, Epoch.seconds, Epoch.images_per_s, Epoch.fraction)
             .join(Trial, Trial.id == Epoch.trial_id).where(Trial.study_id == study.id))
    return [tuple(row) for row in conn.execute(query)]


def budget_use(conn: Connection, study: StudyInfo) -> dict[str, Any] | None:
    """What the study's last hours budget planned and used (search/budget.py's Use), if any."""
    attrs = ot.study_user_attributes
    value = conn.scalar(select(attrs.c.value_json).where(
        attrs.c.study_id == study.optuna_study_id, attrs.c.key == ot.BUDGET_USE_KEY))
    return json.loads(value) if value is not None else None
