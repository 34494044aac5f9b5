"""A study's leaderboard as `hpsearch trials` and the end of `hpsearch run` show it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection

from hpsearch.db import figure_queries, queries
from hpsearch.db.records import StudyInfo, TrialRecord
from hpsearch.report import importance
from hpsearch.report.sheets import Sheet
from hpsearch.report.tables import param_names, trials_sheet


def leaderboard_sheet(conn: Connection, study: StudyInfo, rows: Sequence[TrialRecord], *,
                      ranked: bool, **options: Any) -> Sheet:
    """`trials_sheet` of `rows` with every objective, the best mark and the tags. `ranked`
    (a table on a terminal): the parameters the most important first (so that a
    narrow terminal keeps those), which a note under the table says."""
    names = param_names(study.space, [r.sampled for r in rows])
    notes = []
    if ranked and len(names) > 1:
        found, how = importance.param_importances(
            study.space, figure_queries.complete_params(conn, study), study.objectives[0])
        if found:
            names = importance.by_importance(names, found)
            notes.append(f"parameters by importance: {how}")
    best = queries.best_trial(conn, study)
    values = queries.objective_values(conn, study) if len(study.objectives) > 1 else None
    sheet = trials_sheet(study, rows, names, best=best.number if best else None,
                         values=values, tags=any(r.tags for r in rows), **options)
    sheet.notes += notes if rows else ["no trials match"]
    return sheet
