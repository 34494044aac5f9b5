"""Planning an hours budget (`[budget] hours`, `hpsearch run --hours`): the search, the final
retraining and, where asked, the ensemble inside the same wall-clock hours, remade from the epoch
times the search measures (each hps_epoch row: its seconds and training throughput).

A worker starts no trial after start_by (a later one could not reach its first comparison); a
trial still training at search_end is stopped at the end of its epoch (pruned, its epochs
recorded): the reserve is half a whole-split epoch, the wait that stop costs on average.
Reserving instead for every running trial to finish would hold back the longest rung (12 full
epochs in the shipped study, 8% of its hours) in case a trial got promoted into it. Until a
first trial completes (no final model to train yet) the limits are the deadline itself.

No torch, no Optuna, no database: every time is passed in (wall-clock seconds), so the planning
is tested on synthetic epoch times.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hpsearch.errors import ConfigError
from hpsearch.params import ImageCounts
from hpsearch.search.toml_values import typed_value
from hpsearch.spec import FinalAsk

# from the search's last epoch to the final's first: the workers exiting (~10 s), importing
# torch, reading the whole training set and the test set (~28 s; measured on 2 busy cores)
SETUP_S = 40.0
# aimed at: 97.5% of the hours, the middle of the target (90-105%), as the estimates err both
# ways (a busier machine, a first epoch slower than the median)
MARGIN_SHARE = 0.025
RESERVED_EPOCHS = 0.5  # the expected wait for a running trial's epoch to end, in whole epochs
MAX_HOURS = 10_000.0  # [budget] hours, run --hours
MAX_FINAL_SEEDS = 1000  # the limits of evaluate --seeds and --ensemble
MAX_FINAL_ENSEMBLE = 100


def parse_hours(value: Any, where: str) -> float:
    """[budget] hours or --hours: a positive, finite number of hours."""
    hours = typed_value(where, "hours", value, float, maximum=MAX_HOURS)
    if not hours > 0:
        raise ConfigError(f"{where}: hours must be positive, got {value!r}")
    return hours


def parse_final(budget: dict[str, Any], where: str) -> FinalAsk:
    """[budget] final = {seeds = 3, ensemble = 3}: the final models of an hours budget."""
    if "final" not in budget:
        return FinalAsk()
    label = f"{where}: [budget] final"
    value = budget["final"]
    if "hours" not in budget:
        raise ConfigError(f"{label} applies to an hours budget only: add [budget] hours (or "
                          "run `hpsearch evaluate` yourself)")
    if not isinstance(value, dict) or not set(value) <= {"seeds", "ensemble"}:
        raise ConfigError(f"{label} must be a table with seeds and/or ensemble, e.g. "
                          "{seeds = 3, ensemble = 3}")
    return FinalAsk(
        seeds=typed_value(label, "seeds", value.get("seeds", 1), int, minimum=1,
                          maximum=MAX_FINAL_SEEDS),
        ensemble=typed_value(label, "ensemble", value.get("ensemble", 1), int, minimum=1,
                             maximum=MAX_FINAL_ENSEMBLE))


@dataclass(frozen=True)
class EpochTime:
    """One epoch measured by the search (an hps_epoch row)."""

    trial: int
    seconds: float  # the whole epoch: training and the validation pass
    images_per_s: float  # training throughput
    fraction: float | None = None  # of the train split (a rung); None: all of it


@dataclass(frozen=True)
class Candidate:
    """A trial the final would retrain if the search ended now, and for how many epochs."""

    trial: int
    epochs: int


@dataclass(frozen=True)
class Speed:
    train_s_per_image: float
    eval_s_per_image: float  # the validation (and so the test) pass

    def epoch_s(self, counts: ImageCounts, fraction: float = 1.0) -> float:
        """One epoch of the search on `fraction` of its train split, validation included."""
        return (counts.train * fraction * self.train_s_per_image
                + counts.val * self.eval_s_per_image)

    def final_s(self, counts: ImageCounts, epochs: int) -> float:
        """One final model: `epochs` on the whole training set, then the test pass."""
        return (epochs * counts.full * self.train_s_per_image
                + counts.test * self.eval_s_per_image)


@dataclass(frozen=True)
class StudyShape:
    """What the planner needs to know of the study."""

    counts: ImageCounts
    max_epochs: int
    first_stage: tuple[int, float]  # a trial's first comparison: (epochs, fraction of the split)


@dataclass(frozen=True)
class Plan:
    started: float
    deadline: float
    search_end: float
    start_by: float
    final_s: float | None  # the final models' planned seconds; None: nothing measured yet

    @property
    def search_s(self) -> float:
        return self.search_end - self.started

    @property
    def hours_s(self) -> float:
        return self.deadline - self.started


def speeds(epochs: Sequence[EpochTime], counts: ImageCounts) -> dict[int, Speed]:
    """Each trial's speed, from its epochs on the largest share of the data it reached (the
    final trains on more data still, and a small share may run faster per image, its images
    staying in the CPU's caches): their median, as the first epoch of a process carries
    one-time costs that a mean would spread over the rest."""
    by_trial: dict[int, list[EpochTime]] = {}
    for epoch in epochs:
        if epoch.images_per_s > 0 and epoch.seconds > 0:
            by_trial.setdefault(epoch.trial, []).append(epoch)
    out: dict[int, Speed] = {}
    for trial, all_rows in by_trial.items():
        largest = max(r.fraction or 1.0 for r in all_rows)
        rows = [r for r in all_rows if (r.fraction or 1.0) == largest]
        train = [1.0 / r.images_per_s for r in rows]
        # what the epoch took beyond training its images is the validation pass
        evals = [max(0.0, r.seconds - counts.train * (r.fraction or 1.0) / r.images_per_s)
                 / counts.val for r in rows]
        out[trial] = Speed(statistics.median(train), statistics.median(evals))
    return out


def typical(measured: dict[int, Speed]) -> Speed:
    """The median speed over the trials measured: the price of a configuration not yet known."""
    return Speed(statistics.median(s.train_s_per_image for s in measured.values()),
                 statistics.median(s.eval_s_per_image for s in measured.values()))


def final_seconds(final: FinalAsk, shape: StudyShape, candidates: Sequence[Candidate],
                  measured: dict[int, Speed]) -> float:
    """The final models' seconds: each of the `final.ensemble` best configurations (fewer
    candidates than that: the rest priced as typical at the full epoch budget) retrained once
    per seed, at the speed a search worker measured (the final trains as one worker does)."""
    usual = typical(measured)
    chosen = list(candidates[:final.ensemble])
    per_seed = sum(measured.get(c.trial, usual).final_s(shape.counts, c.epochs) for c in chosen)
    per_seed += (final.ensemble - len(chosen)) * usual.final_s(shape.counts, shape.max_epochs)
    return SETUP_S + final.seeds * per_seed


def make_plan(started: float, hours: float, final: FinalAsk, shape: StudyShape,
              epochs: Sequence[EpochTime], candidates: Sequence[Candidate]) -> Plan:
    """The plan of a run that started at `started` (wall-clock seconds) with `hours` to spend,
    from the epochs measured so far and the final's candidates (best first):
    search_end = deadline - final - reserve - margin; start_by = search_end - a first stage."""
    deadline = started + hours * 3600.0
    measured = speeds(epochs, shape.counts)
    final_s = final_seconds(final, shape, candidates, measured) if measured else None
    if final_s is None or not candidates:
        return Plan(started, deadline, deadline, deadline, final_s)
    usual = typical(measured)
    search_end = (deadline - final_s - RESERVED_EPOCHS * usual.epoch_s(shape.counts)
                  - MARGIN_SHARE * hours * 3600.0)
    stage_epochs, stage_fraction = shape.first_stage
    start_by = search_end - stage_epochs * usual.epoch_s(shape.counts, stage_fraction)
    return Plan(started, deadline, search_end, start_by, final_s)


@dataclass(frozen=True)
class Use:
    """What a run spent, beside what it planned (the run's last lines and the report)."""

    hours_s: float
    search_planned_s: float
    search_used_s: float
    final_planned_s: float | None
    final_used_s: float

    @property
    def used_s(self) -> float:
        return self.search_used_s + self.final_used_s

    @property
    def left_s(self) -> float:
        return self.hours_s - self.used_s

    def line(self) -> str:
        final_plan = clock(self.final_planned_s) if self.final_planned_s is not None else "-"
        left = (f"left {clock(self.left_s)}" if self.left_s >= 0
                else f"past the deadline by {clock(-self.left_s)}")
        return (f"budget {clock(self.hours_s)}: search planned {clock(self.search_planned_s)}, "
                f"used {clock(self.search_used_s)}; final planned {final_plan}, used "
                f"{clock(self.final_used_s)}; used {clock(self.used_s)} "
                f"({100 * self.used_s / self.hours_s:.1f}%), {left}")


def progress_line(plan: Plan, now: float) -> str:
    """The live view's budget part: search used of planned, the final planned, what is left."""
    final = f"~{clock(plan.final_s)}" if plan.final_s is not None else "not yet measured"
    return (f"budget {clock(plan.hours_s)}: search {clock(now - plan.started)} of "
            f"{clock(max(0.0, plan.search_s))} planned, final {final}, "
            f"left {clock(max(0.0, plan.deadline - now))}")


def clock(seconds: float) -> str:
    """H:MM:SS"""
    whole = round(seconds)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"
