"""A study's central stop, pause and target: one state in the database that every worker, on
every machine, reads.

`hpsearch study stop|pause|resume NAME`, and a study's `[study] target` once a trial reaches
it, write the state on the Optuna study (user attribute CONTROL_ATTR, so optuna-dashboard shows
it too): {"state": "stopped" | "paused", "reason": ...}; absent or None, the study runs.
Workers read it (one query) between trials: paused or stopped, no new trial starts and the
worker leaves. A stop is also read after each epoch: the running trial ends there, kept with
its checkpoint and queued again (hpsearch.stop.StudyHalted, handled as any stop), so that after
`resume` the same `hpsearch run` continues it where it was. A pause lets running trials finish.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna
from sqlalchemy import Engine

from hpsearch.db.lifecycle import write_transaction
from hpsearch.db.migrate import reading
from hpsearch.db.optuna_tables import (
    BUDGET_LIMITS_KEY,
    CONTROL_ATTR,
    set_study_attr,
    study_attrs,
    study_state,
)
from hpsearch.db.queries import find_study
from hpsearch.db.session import connection_scope
from hpsearch.search.hours import SearchLimits
from hpsearch.search.study_file import StudyConfig
from hpsearch.stop import StudyHalted

HALTS = {  # state: why, for a reason nobody gave
    "stopped": "stopped by `hpsearch study stop`",
    "paused": "paused by `hpsearch study pause`",
}


@dataclass(frozen=True)
class Halt:
    state: str  # "stopped" or "paused"
    reason: str

    def line(self, name: str) -> str:
        return (f"study {name!r} is {self.state} ({self.reason}): `hpsearch study resume "
                f"{name!r}` lets workers in again")


def halt_of(attrs: dict[str, Any]) -> Halt | None:
    """The study's state from its (CONTROL_ATTR) user attribute; None: it runs."""
    value = attrs.get(CONTROL_ATTR)
    if not isinstance(value, dict) or value.get("state") not in HALTS:
        return None
    return Halt(value["state"], str(value.get("reason") or HALTS[value["state"]]))


def set_halt(url: str, name: str, state: str | None) -> str:
    """Stop, pause or (state None) resume study `name` for every worker; what was done."""
    with reading(url) as conn:
        study = find_study(conn, name)
        was = halt_of(study_attrs(conn, study.optuna_study_id, (CONTROL_ATTR,)))
    halt = Halt(state, HALTS[state]) if state is not None else None
    with write_transaction(url) as conn:
        set_study_attr(conn, study.optuna_study_id, CONTROL_ATTR,
                       halt.__dict__ if halt is not None else None)
    if state is None:
        return (f"study {study.name!r} resumed: workers may start trials again (`hpsearch run` "
                "of its file continues it)" if was else
                f"study {study.name!r} is neither stopped nor paused: nothing to resume")
    return (f"study {study.name!r} {state}: " + (
        "each worker ends its trial at its next epoch (kept, with its checkpoint, to resume) "
        "and leaves" if state == "stopped" else
        "each worker finishes its trial and leaves") + f"; `hpsearch study resume "
        f"{study.name!r}` lets workers in again")


def study_halt(url: str, name: str) -> Halt | None:
    """The state of study `name` (created: `hpsearch run` asks after preparing it)."""
    with reading(url) as conn:
        return halt_of(study_attrs(conn, find_study(conn, name).optuna_study_id,
                                   (CONTROL_ATTR,)))


class StudyControl:
    """A worker's view of its study's state, and the study's target. Read afresh each time:
    before a trial with the trial counts (one statement), after each epoch by the epoch's write
    (db.recorder's WATCHED), so a stop takes effect at the first epoch's end. The hours
    budget's limits are read along for `limits`."""

    def __init__(self, study: optuna.Study, config: StudyConfig, engine: Engine,
                 limits: SearchLimits) -> None:
        self.study, self.config, self.engine, self.limits = study, config, engine, limits

    def _seen(self, attrs: dict[str, Any]) -> Halt | None:
        self.limits.seen(attrs.get(BUDGET_LIMITS_KEY))
        return halt_of(attrs)

    def after_epoch(self, attrs: dict[str, Any]) -> None:
        """Raise StudyHalted when the study was stopped: the trial ends at this epoch.
        `attrs`: the state and the limits, as the epoch's write read them back."""
        halt = self._seen(attrs)
        if halt is not None and halt.state == "stopped":
            raise StudyHalted(f"{halt.reason}: ended at an epoch's end, to resume")

    def before_trial(self) -> tuple[Halt | None, dict[str, int]]:
        """Why no trial may start now (None: one may), and the study's trials by state
        (optuna_tables.TRIAL_STATES), read together. A target the study's best trial reached
        stops the study, here, for every worker."""
        with connection_scope(self.engine) as conn:
            counts, attrs = study_state(conn, self.study._study_id, (CONTROL_ATTR,),
                                        (BUDGET_LIMITS_KEY,))
        halt = self._seen(attrs)
        target = self.config.target
        if halt is None and target is not None:
            best = _best_value(self.study)
            objective = self.config.objectives[0]
            if best is not None and (best >= target if objective.maximize else best <= target):
                halt = Halt("stopped", f"target {objective.measure} "
                            f"{'>=' if objective.maximize else '<='} {target:g} reached "
                            f"(best {best:.4f})")
                self.study.set_user_attr(CONTROL_ATTR, halt.__dict__)
        return halt, counts


def _best_value(study: optuna.Study) -> float | None:
    try:
        return study.best_value
    except ValueError:  # no complete trial yet
        return None
