"""What an hours budget is planned from (hpsearch.search.budget): the epoch times measured."""

from __future__ import annotations

from sqlalchemy import Connection, select

from hpsearch.db.models import Epoch, Trial
from hpsearch.db.records import StudyInfo


def epoch_times(conn: Connection, study: StudyInfo) -> list[tuple[int, float, float, float | None]]:
    """(trial number, seconds, images_per_s, fraction) of every epoch the study's trials ran."""
    query = (select(Trial.number, Epoch.seconds, Epoch.images_per_s, Epoch.fraction)
             .join(Trial, Trial.id == Epoch.trial_id).where(Trial.study_id == study.id))
    return [(number, seconds, ips, fraction) for number, seconds, ips, fraction
            in conn.execute(query)]
