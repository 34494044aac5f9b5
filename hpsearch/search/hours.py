"""An hours budget at work (the plan itself: hpsearch.search.budget).

`hpsearch run` re-plans from the database every PLAN_EVERY_S seconds and publishes the search's
two limits on the Optuna study (system attribute BUDGET_LIMITS_KEY, wall-clock seconds):
start_by, after which a worker starts no trial, and search_end, after which a running trial
stops at the end of its epoch. Every worker reads them, so workers on other machines (`hpsearch
worker`) keep the budget too. The launcher clears them when the run ends. A launcher killed
outright leaves them behind; the next `hpsearch run` of the study replaces them.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

from optuna.storages import BaseStorage

from hpsearch.db import queries
from hpsearch.db.budget_queries import epoch_times
from hpsearch.db.engine import make_engine
from hpsearch.db.optuna_tables import BUDGET_LIMITS_KEY, BUDGET_USE_KEY
from hpsearch.db.session import connection_scope
from hpsearch.search.budget import (
    Candidate,
    EpochTime,
    FinalAsk,
    Plan,
    StudyShape,
    Use,
    make_plan,
    progress_line,
)
from hpsearch.search.study import open_storage
from hpsearch.search.study_file import StudyConfig
from hpsearch.trainer.data_sources import dataset_sizes

PLAN_EVERY_S = 10.0
Clock = Callable[[], float]


def study_shape(config: StudyConfig) -> StudyShape:
    """The study as planned, its image counts those of the files the run reads (a data folder
    may hold fewer images than the dataset as published)."""
    first = ((config.rungs[0].epochs, config.rungs[0].fraction) if config.rungs
             else (config.min_epochs, 1.0))
    counts = config.data.image_counts(dataset_sizes(config.data))
    return StudyShape(counts, config.max_epochs, first)


class SearchLimits:
    """A worker's view of the published limits (none published: no limits), as last read
    along with the study's state: before each trial and by each epoch's write (StudyControl)."""

    def __init__(self, clock: Clock = time.time) -> None:
        self.clock = clock
        self.limits: dict[str, Any] | None = None

    def seen(self, limits: dict[str, Any] | None) -> None:
        self.limits = limits

    def may_start(self) -> bool:
        return self.limits is None or self.clock() < self.limits["start_by"]

    def search_over(self) -> bool:
        return self.limits is not None and self.clock() >= self.limits["search_end"]


def publish_limits(storage: BaseStorage, study_id: int,
                   limits: dict[str, float] | None) -> None:
    """The limits every worker keeps: {"start_by": t, "search_end": t}; None: no limits."""
    storage.set_study_system_attr(study_id, BUDGET_LIMITS_KEY, limits)


def clear_limits_left_behind(url: str, config: StudyConfig) -> None:
    """For a run without a budget: limits a launcher killed outright left behind would keep
    every worker from starting a trial. Writes nothing where there are none."""
    storage = open_storage(url, config.workers)
    try:
        study_id = storage.get_study_id_from_name(config.name)
        if storage.get_study_system_attrs(study_id).get(BUDGET_LIMITS_KEY) is not None:
            publish_limits(storage, study_id, None)
    finally:
        storage.remove_session()
        storage.engine.dispose()


class BudgetKeeper:
    """The launcher's side: plans, publishes the limits, and says where the budget stands."""

    def __init__(self, config: StudyConfig, url: str, hours: float, final: FinalAsk,
                 *, started: float | None = None,
                 clock: Clock = time.time) -> None:
        self.config = config
        # one pool for the launcher's reads and its writes to Optuna's study, closed by finish
        self.engine = make_engine(url)
        self.storage = open_storage(url, config.workers, pool=self.engine.pool)
        self.study_id = self.storage.get_study_id_from_name(config.name)
        self.hours, self.final, self.clock = hours, final, clock
        self.shape = study_shape(config)
        self.started = started if started is not None else clock()
        self.plan = make_plan(self.started, hours, final, self.shape, (), ())
        self.planned_at: float | None = None
        self.published: Plan | None = None
        self.search_done: float | None = None

    def update(self) -> Plan:
        """Re-plan (at most every PLAN_EVERY_S) and publish the limits if they moved."""
        now = self.clock()
        if self.planned_at is not None and now - self.planned_at < PLAN_EVERY_S:
            return self.plan
        self.planned_at = now
        epochs, candidates = self._measured()
        self.plan = make_plan(self.started, self.hours, self.final, self.shape, epochs,
                              candidates)
        old = self.published
        if old is None or abs(old.start_by - self.plan.start_by) >= 1 or abs(
                old.search_end - self.plan.search_end) >= 1:
            publish_limits(self.storage, self.study_id,
                           {"start_by": self.plan.start_by, "search_end": self.plan.search_end})
            self.published = self.plan
        return self.plan

    def _measured(self) -> tuple[list[EpochTime], list[Candidate]]:
        with connection_scope(self.engine) as conn:
            study = queries.find_study(conn, self.config.name)
            epochs = [EpochTime(*row) for row in epoch_times(conn, study)]
            top = queries.top_trials(conn, study, self.final.ensemble)
        # each one's retraining length, as `hpsearch evaluate` retrains it: up to its peak
        return epochs, [Candidate(t.number, t.best_epoch or self.config.max_epochs) for t in top]

    def line(self) -> str:
        return progress_line(self.plan, self.clock())

    def end_search(self) -> None:
        """The search is over: the final's plan is made from every epoch measured (the last
        periodic re-plan may predate the first completed trial, when a search is short)."""
        self.search_done = self.clock()
        self.planned_at = None
        self.update()

    def use(self) -> Use:
        """What was planned and used; the final's use runs until now."""
        done = self.search_done if self.search_done is not None else self.clock()
        # a final priced above the hours left the search no time: planned 0, not less
        return Use(self.plan.hours_s, max(0.0, self.plan.search_s), done - self.started,
                   self.plan.final_s, self.clock() - done)

    def finish(self, use: Use | None) -> None:
        """Clear the limits and keep what was planned and used on the study (the report shows
        it)."""
        try:
            publish_limits(self.storage, self.study_id, None)
            if use is not None:
                self.storage.set_study_user_attr(self.study_id, BUDGET_USE_KEY,
                                                 dataclasses.asdict(use))
        finally:
            self.storage.remove_session()
            self.engine.dispose()
