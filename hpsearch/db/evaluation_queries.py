"""Reads of the test-set results: evaluations of single trials and ensembles (written by
`hpsearch evaluate`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, select

from hpsearch.db.models import EnsembleEvaluation, Evaluation, Trial
from hpsearch.db.records import EnsembleSummary, EvaluationSummary, StoredEvaluation, StudyInfo


def latest_ensemble(conn: Connection, study: StudyInfo) -> EnsembleSummary | None:
    """The study's most recently stored ensemble, over the seeds it was scored with."""
    latest = conn.execute(
        select(EnsembleEvaluation.members_key).where(EnsembleEvaluation.study_id == study.id)
        .order_by(EnsembleEvaluation.created_at.desc(), EnsembleEvaluation.id.desc()).limit(1)
    ).scalar()
    if latest is None:
        return None
    rows = conn.execute(
        select(EnsembleEvaluation.__table__).where(EnsembleEvaluation.study_id == study.id,
                                                   EnsembleEvaluation.members_key == latest)
        .order_by(EnsembleEvaluation.seed)).all()
    return EnsembleSummary(rows[0].selection, tuple(rows[0].members),
                           tuple(r.test_acc for r in rows), rows[0].tta,
                           tuple(r.test_acc_tta for r in rows if r.test_acc_tta is not None))


def stored_ensembles(conn: Connection, study: StudyInfo, members_key: str,
                     seeds: Sequence[int]) -> dict[int, Any]:
    """The study's stored results of one ensemble (by `members_key`) for these seeds."""
    rows = conn.execute(select(EnsembleEvaluation.__table__).where(
        EnsembleEvaluation.study_id == study.id, EnsembleEvaluation.members_key == members_key,
        EnsembleEvaluation.seed.in_(seeds))).all()
    return {row.seed: row for row in rows}


def study_evaluations(conn: Connection, study: StudyInfo) -> dict[int, EvaluationSummary]:
    """Final test accuracy by trial number, for the study's evaluated trials (few rows: one per
    retraining), ordered by when each trial was last evaluated."""
    query = (select(Trial.number, Evaluation.epochs, Evaluation.test_acc)
             .join(Trial, Trial.id == Evaluation.trial_id)
             .where(Trial.study_id == study.id)
             .order_by(Evaluation.created_at, Evaluation.id))
    by_trial: dict[int, list[tuple[int, float]]] = {}
    for number, epochs, acc in conn.execute(query):  # re-inserted: the last evaluated comes last
        by_trial[number] = [*by_trial.pop(number, []), (epochs, acc)]
    out: dict[int, EvaluationSummary] = {}
    for number, rows in by_trial.items():
        epochs = rows[-1][0]  # the epoch count of the trial's latest evaluation
        out[number] = EvaluationSummary(number, epochs, tuple(a for e, a in rows if e == epochs))
    return out


def stored_evaluations(conn: Connection, trial_id: int, epochs: int,
                       seeds: Sequence[int]) -> dict[int, StoredEvaluation]:
    """The trial's stored retrainings of `epochs` epochs with these seeds, by seed."""
    rows = conn.execute(select(
        Evaluation.seed, Evaluation.epochs, Evaluation.test_acc, Evaluation.test_loss,
        Evaluation.seconds, Evaluation.checkpoint_path).where(
        Evaluation.trial_id == trial_id, Evaluation.epochs == epochs,
        Evaluation.seed.in_(seeds)))
    return {row.seed: StoredEvaluation(*row) for row in rows}
