"""Reads for the report's figures: points, curves, bands, the inputs of importances and the
rungs of a multi-fidelity budget, in SQL (aggregates computed by the database)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, case, func, select
from sqlalchemy.sql.elements import ColumnElement

from hpsearch.db.models import Epoch, Trial
from hpsearch.db.queries import BEST_STATES, eligible_for_best, in_best_order, utc
from hpsearch.db.records import Band, Curve, RungStats, StudyInfo, TrialPoint

QUANTILES = (10, 50, 90)  # percentiles of the per-epoch band in reports


def rung_stats(conn: Connection, study: StudyInfo) -> list[RungStats]:
    """Per training fraction (smallest first): trials, epochs, time and best val acc; empty
    for a study without rungs (its rows have no fraction)."""
    query = (select(Epoch.fraction, func.count(func.distinct(Epoch.trial_id)),
                    func.max(Epoch.epoch), func.count(), func.sum(Epoch.seconds),
                    func.max(Epoch.val_acc))
             .join(Trial, Trial.id == Epoch.trial_id)
             .where(Trial.study_id == study.id, Epoch.fraction.is_not(None))
             .group_by(Epoch.fraction).order_by(Epoch.fraction))
    return [RungStats(float(f), int(t), int(e), int(n), float(s or 0.0), a)
            for f, t, e, n, s, a in conn.execute(query)]


def trial_points(conn: Connection, study: StudyInfo) -> list[TrialPoint]:
    query = (select(Trial.number, Trial.state, Trial.value, Trial.started_at, Trial.finished_at)
             .where(Trial.study_id == study.id).order_by(Trial.number))
    return [TrialPoint(r.number, r.state, r.value, utc(r.started_at), utc(r.finished_at))
            for r in conn.execute(query)]


def complete_params(conn: Connection, study: StudyInfo, *, with_pruned: bool = False
                    ) -> list[tuple[int, float, dict]]:
    """(number, value, sampled params) of every trial that counts for best (`best_query`'s
    rule), for parallel coordinates, slices and importances; `with_pruned` adds the pruned
    trials with a finite value (their best before they were stopped, at a smaller budget)."""
    eligible = eligible_for_best()
    if with_pruned:
        eligible = (Trial.state.in_((*BEST_STATES, "pruned")), *eligible[1:])
    query = (select(Trial.number, Trial.value, Trial.params, Trial.sampled)
             .where(Trial.study_id == study.id, *eligible).order_by(Trial.number))
    return [(r.number, r.value, {k: (r.params or {})[k] for k in r.sampled or ()
                                 if k in (r.params or {})})
            for r in conn.execute(query)]


def top_curves(conn: Connection, study: StudyInfo, metrics: Sequence[str],
               top: int) -> list[Curve]:
    """Per-epoch curves of the `top` trials by value (trials without a value come last)."""
    ranked = (select(Trial.id).where(Trial.study_id == study.id)
              .order_by(_best_first(study), Trial.number).limit(top))
    query = (select(Trial.number, Trial.state, Epoch.epoch,
                    *[getattr(Epoch, m) for m in metrics])
             .join(Trial, Trial.id == Epoch.trial_id)
             .where(Epoch.trial_id.in_(ranked.scalar_subquery()))
             .order_by(_best_first(study), Trial.number, Epoch.epoch))
    curves: dict[int, Curve] = {}
    for row in conn.execute(query):
        curve = curves.get(row.number)
        if curve is None:
            curve = curves[row.number] = Curve(row.number, row.state, [],
                                               {m: [] for m in metrics})
        curve.epochs.append(row.epoch)
        for metric in metrics:
            curve.values[metric].append(getattr(row, metric))
    return list(curves.values())


def _best_first(study: StudyInfo) -> ColumnElement[Any]:
    """Trials by value, best first in the first objective's direction, no value last."""
    return in_best_order(Trial.value, study.objectives[0]).nulls_last()


def epoch_band(conn: Connection, study: StudyInfo, metric: str, *,
               skip_top: int) -> Band | None:
    """Nearest-rank percentiles of `metric` at every epoch over all trials but the best
    `skip_top`, computed in SQL with window functions (SQLite >= 3.25 and PostgreSQL alike)."""
    top = (select(Trial.id).where(Trial.study_id == study.id)
           .order_by(_best_first(study), Trial.number).limit(skip_top))
    value = getattr(Epoch, metric)
    ranked = (
        select(Epoch.epoch.label("epoch"), value.label("v"),
               func.row_number().over(partition_by=Epoch.epoch, order_by=value).label("rn"),
               func.count().over(partition_by=Epoch.epoch).label("n"))
        .join(Trial, Trial.id == Epoch.trial_id)
        .where(Trial.study_id == study.id, Epoch.trial_id.not_in(top.scalar_subquery()))
        .subquery()
    )
    # The p-th percentile is the smallest value whose rank r satisfies 100 * r >= p * n.
    picks = [func.min(case((ranked.c.rn * 100 >= ranked.c.n * p, ranked.c.v)))
             .label(f"p{p}") for p in QUANTILES]
    query = (select(ranked.c.epoch, func.max(ranked.c.n).label("n"), *picks)
             .group_by(ranked.c.epoch).order_by(ranked.c.epoch))
    rows = conn.execute(query).all()
    if not rows:
        return None
    return Band(metric, [r.epoch for r in rows], [r.n for r in rows],
                {p: [float(getattr(r, f"p{p}")) for r in rows] for p in QUANTILES})
