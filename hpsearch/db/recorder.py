"""Writes of the runner: study rows, trial rows, and one row per finished epoch.

Every write is one short transaction (`session_scope`). A failed write is never dropped
silently: it raises, which ends the trial (resumed from its checkpoint). The writes of a running
trial apply only while its row is running: once the heartbeat check has failed it, a frozen
worker that wakes gets TrialLost instead of writing over its retry's history.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, Row, func, select, update
from sqlalchemy.orm import Session

from hpsearch.db.errors import DuplicateRowError
from hpsearch.db.models import (
    EPOCH_METRICS,
    EnsembleEvaluation,
    Epoch,
    Evaluation,
    Study,
    Trial,
    study_named,
    utcnow,
)
from hpsearch.db.optuna_link import BrokenLink, check_link, refuse_foreign, row_marker
from hpsearch.db.optuna_tables import (
    BUDGET_LIMITS_KEY,
    CONTROL_ATTR,
    attr_value,
    set_marker,
    set_trial_user_attrs,
)
from hpsearch.db.queries import ranked_query
from hpsearch.db.session import dialect_insert, session_scope
from hpsearch.errors import TrialLost
from hpsearch.metrics import EpochMetrics
from hpsearch.objectives import DEFAULT, ObjectiveSpec

# What a worker checks after each epoch, read back by the epoch's write: (key, system
# attribute?) of the trial's Optuna study. A central stop or pause, and an hours budget's limits.
WATCHED = ((CONTROL_ATTR, False), (BUDGET_LIMITS_KEY, True))


@dataclass(frozen=True)
class EpochWritten:
    best_epoch: int | None  # the trial's best epoch so far
    study_attrs: dict[str, Any]  # the WATCHED attributes present


class Recorder:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @property
    def url(self) -> str:
        return self.engine.url.render_as_string(hide_password=False)

    def ensure_study(self, name: str, optuna_study_id: int, spec: dict[str, Any],
                     settings: dict[str, Any], dataset: str) -> int:
        """The study's row id: a new row holds `spec` and `settings`; an existing one keeps
        its spec and takes the trial target (n_trials) of `settings`."""
        def write() -> int:
            with session_scope(self.engine) as session:
                study = session.scalar(select(Study).where(study_named(name)))
                if study is None:
                    study = Study(name=name, optuna_study_id=optuna_study_id, spec=spec,
                                  settings=settings, dataset=dataset)
                    session.add(study)
                    session.flush()
                    # the Optuna study names our row: re-created under the same id, it won't
                    set_marker(session.connection(), optuna_study_id,
                               row_marker(study.id, study.created_at))
                    return study.id
                # a re-created Optuna study must never write into the old one's rows
                check_link(session.connection(), study)
                if study.optuna_study_id != optuna_study_id:
                    raise BrokenLink(f"study {name!r}: Optuna's study has id "
                                     f"{optuna_study_id}, our rows were recorded for id "
                                     f"{study.optuna_study_id}")
                study.settings = {**study.settings, "n_trials": settings["n_trials"]}
                return study.id
        try:
            return write()
        except DuplicateRowError:  # another process created the row meanwhile: now it is found
            return write()

    def replace_settings(self, name: str, settings: dict[str, Any]) -> None:
        """Store the settings of an edited study file (`hpsearch run --update`); the spec
        never changes."""
        with session_scope(self.engine) as session:
            session.execute(update(Study).where(study_named(name))
                            .values(settings=settings))

    def start_trial(self, study_id: int, number: int, optuna_trial_id: int,
                    params: dict[str, Any], sampled: list[str], worker: str,
                    retried_from: int | None, seed: int, precision: str | None = None,
                    device: str | None = None) -> int:
        """The trial's row: `params` is every parameter that acts in the run (sampled and
        fixed), `sampled` names the ones the sampler chose, `seed` the one it trains with;
        `precision` and `device` are what the run resolved "auto" to."""
        with session_scope(self.engine) as session:
            # one statement: a row already there (a write whose commit we did not see) is kept
            created = session.execute(dialect_insert(session.connection())(Trial).values(
                study_id=study_id, number=number, optuna_trial_id=optuna_trial_id,
                state="running", params=params, sampled=sampled, worker=worker,
                retried_from=retried_from, seed=seed, epochs_run=0, precision=precision,
                device=device).on_conflict_do_nothing(
                index_elements=[Trial.study_id, Trial.number]).returning(Trial.id)).first()
            if created is not None:
                return created.id
            existing = session.execute(select(Trial.id, Trial.optuna_trial_id).where(
                Trial.study_id == study_id, Trial.number == number)).one()
            if existing.optuna_trial_id != optuna_trial_id:  # another trial's row
                raise BrokenLink(
                    f"trial row {number} of study row {study_id} belongs to Optuna "
                    f"trial id {existing.optuna_trial_id}, not {optuna_trial_id}; "
                    "see `hpsearch db check`")
            return existing.id

    def copy_epochs(self, from_trial_id: int, to_trial_id: int, up_to_epoch: int,
                    primary: ObjectiveSpec = DEFAULT[0]) -> None:
        """Carry a retried trial's finished epochs over to the trial that resumes it."""
        with session_scope(self.engine) as session:
            rows = session.scalars(select(Epoch).where(
                Epoch.trial_id == from_trial_id, Epoch.epoch <= up_to_epoch)).all()
            for row in rows:
                metrics = EpochMetrics(epoch=row.epoch,
                                       **{m: getattr(row, m) for m in EPOCH_METRICS})
                self._upsert_epoch(session, to_trial_id, metrics, row.fraction)
            self._refresh_summary(session, to_trial_id, primary)

    def _upsert_epoch(self, session: Session, trial_id: int, metrics: EpochMetrics,
                      fraction: float | None = None) -> None:
        values = {"trial_id": trial_id, **metrics.to_dict(), "fraction": fraction}
        stmt = dialect_insert(session.connection())(Epoch).values(**values)
        stmt = stmt.on_conflict_do_update(
            index_elements=[Epoch.trial_id, Epoch.epoch],
            set_={k: v for k, v in values.items() if k not in ("trial_id", "epoch")},
        )
        session.execute(stmt)

    def record_epoch(self, trial_id: int, metrics: EpochMetrics,
                     primary: ObjectiveSpec = DEFAULT[0], fraction: float | None = None
                     ) -> EpochWritten:
        """Insert the epoch row (or overwrite it, if a resumed trial redoes that epoch) and
        update the trial's summary (its value: the `primary` objective's best epoch), in one
        transaction; returns the trial's best epoch so far, and what a worker checks after
        each epoch (WATCHED), read by the same statement. `fraction`: the share of the
        training split it trained on, for a rung of a multi-fidelity budget. TrialLost if the
        trial was failed meanwhile (see the module)."""
        optuna_study = (select(Study.optuna_study_id).where(Study.id == Trial.study_id)
                        .correlate(Trial).scalar_subquery())
        watched = [attr_value(optuna_study, key, system=system) for key, system in WATCHED]
        with session_scope(self.engine) as session:
            self._upsert_epoch(session, trial_id, metrics, fraction)
            row = self._refresh_summary(session, trial_id, primary, *watched, running=True)
            if row is None:  # raised inside: the epoch row is rolled back
                raise TrialLost(f"trial row {trial_id} was failed while it ran here")
        return EpochWritten(row[0], {key: json.loads(value) for (key, _), value in zip(
            WATCHED, row[1:], strict=True) if value is not None})

    def _refresh_summary(self, session: Session, trial_id: int, primary: ObjectiveSpec,
                         *returning: Any, running: bool = False) -> Row[Any] | None:
        """The trial row's value, best epoch and epoch count from its epoch rows; returns the
        best epoch and `returning` (None: no such row). The one definition of a trial's best
        epoch: the `primary` objective's best, the earliest of equal ones. `running`: only
        while the row is running."""
        measure = getattr(Epoch, primary.measure)
        best = (select(Epoch).where(Epoch.trial_id == trial_id, measure.is_not(None))
                .order_by(measure.desc() if primary.maximize else measure.asc(), Epoch.epoch)
                .limit(1))
        row = update(Trial).where(Trial.id == trial_id)
        if running:
            row = row.where(Trial.state == "running")
        return session.execute(row.values(
            value=best.with_only_columns(measure).scalar_subquery(),
            best_epoch=best.with_only_columns(Epoch.epoch).scalar_subquery(),
            epochs_run=select(func.count()).where(Epoch.trial_id == trial_id).scalar_subquery(),
        ).returning(Trial.best_epoch, *returning)).first()

    def finish_trial(self, trial_id: int, state: str, seconds: float, n_params: int | None,
                     reason: str | None = None) -> int | None:
        """End a running trial's row; returns its best epoch (the one rule for it: see
        _refresh_summary). TrialLost if it was failed meanwhile (see the module)."""
        with session_scope(self.engine) as session:
            ended = session.execute(update(Trial).where(
                Trial.id == trial_id, Trial.state == "running").values(
                state=state, seconds=seconds, n_params=n_params, reason=reason,
                finished_at=utcnow()).returning(Trial.best_epoch)).first()
        if ended is None:
            raise TrialLost(f"trial row {trial_id} was failed while it ran here")
        return ended.best_epoch

    def set_user_attrs(self, optuna_trial_id: int, attrs: dict[str, Any]) -> None:
        """Optuna user attributes of a trial, in one statement (see
        optuna_tables.set_trial_user_attrs)."""
        with session_scope(self.engine) as session:
            set_trial_user_attrs(session.connection(), optuna_trial_id, attrs)

    def trial_id(self, study_id: int, number: int) -> int | None:
        with session_scope(self.engine) as session:
            return session.scalar(select(Trial.id).where(
                Trial.study_id == study_id, Trial.number == number))

    def mark_dead(self, optuna_trial_id: int, reason: str) -> None:
        """Fail the row of a trial Optuna has failed (its heartbeat check, or its worker after a
        fault the row could not be told of), if it is still running: `reason` says why."""
        with session_scope(self.engine) as session:
            session.execute(update(Trial).where(
                Trial.optuna_trial_id == optuna_trial_id, Trial.state == "running").values(
                state="failed", reason=reason, finished_at=utcnow()))

    def ended_outside_top(self, study_id: int, numbers: list[int], k: int,
                          objectives: tuple[ObjectiveSpec, ...]) -> list[int]:
        """Of the trials `numbers`, those that completed or were pruned and are not among the
        study's `k` best (`queries.ranked_query`): their kept models can go."""
        with session_scope(self.engine) as session:
            best = set(session.scalars(ranked_query(study_id, Trial.number,
                                                    objectives=objectives).limit(k)))
            ended = session.scalars(select(Trial.number).where(
                Trial.study_id == study_id, Trial.number.in_(numbers),
                Trial.state.in_(("complete", "pruned"))))
            return sorted(set(ended) - best)

    def study_row(self, name: str) -> Study | None:
        """Our row of study `name`, None if there is none; BrokenLink when Optuna no longer
        has the study the row was recorded for under that name."""
        with session_scope(self.engine, expire_on_commit=False) as session:
            study = session.scalar(select(Study).where(study_named(name)))
            if study is not None:
                check_link(session.connection(), study)
            else:
                refuse_foreign(session.connection(), name)
            return study

    def store_evaluation(self, trial_id: int, seed: int, epochs: int, test_acc: float,
                         test_loss: float, curve: list[dict[str, float]], checkpoint_path: str,
                         seconds: float) -> None:
        """One final retraining's result; DuplicateRowError if that (trial, seed, epochs) was
        stored meanwhile by another process."""
        with session_scope(self.engine) as session:
            session.add(Evaluation(
                trial_id=trial_id, seed=seed, epochs=epochs, test_acc=test_acc,
                test_loss=test_loss, curve=curve, checkpoint_path=checkpoint_path,
                seconds=seconds))

    def store_ensemble(self, row: dict[str, Any]) -> None:
        """One ensemble's result for one seed (the columns of hps_ensemble); DuplicateRowError
        if that (study, seed, members_key) was stored meanwhile by another process."""
        with session_scope(self.engine) as session:
            session.add(EnsembleEvaluation(**row))

