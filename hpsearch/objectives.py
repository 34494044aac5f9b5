"""What a study optimises: one objective or several, each a measure of a trial and a direction.

`[study] metric = "val_loss"` names one objective in its natural direction; `[study] objectives =
["val_acc:max", "params:min"]` names several. The first objective must be an epoch measure:
the trials' `value` column and best epoch follow it, and among the Pareto front it picks the
chosen trial (see `hpsearch.db.queries.best_query`). The pruners follow the pruned objective
(`[pruner] objective`, the first by default), the one reported each epoch.

Every measure has one definition, computed by the objective for Optuna and in SQL for the views:
an epoch measure counts its best epoch in its direction (val_acc: the highest, val_loss: the
lowest), `params` the model's parameter count, `seconds_per_epoch` the mean time of its epochs.
No torch, Optuna or SQL here.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from hpsearch.errors import ConfigError

# measure -> its natural direction (the one `metric = ...` and a bare name in `objectives` get)
MEASURES = {"val_acc": "max", "val_loss": "min", "params": "min", "seconds_per_epoch": "min"}
EPOCH_MEASURES = ("val_acc", "val_loss")  # measured every epoch: may come first, be pruned on
DIRECTIONS = ("max", "min")


@dataclass(frozen=True)
class ObjectiveSpec:
    measure: str  # one of MEASURES
    direction: str = "max"  # "max" or "min"

    @property
    def maximize(self) -> bool:
        return self.direction == "max"

    @property
    def label(self) -> str:
        """As the study file writes it: val_acc:max."""
        return f"{self.measure}:{self.direction}"

    @property
    def key(self) -> str:
        """The column key of this measure in tables and exports (best_val_acc, n_params, ...;
        `params.*` are the parameters' own columns)."""
        if self.measure == "params":
            return "n_params"
        return f"best_{self.measure}" if self.measure in EPOCH_MEASURES else self.measure

    @property
    def title(self) -> str:
        return "parameters" if self.measure == "params" else self.key.replace("_", " ")

    def best_index(self, values: Sequence[float]) -> int | None:
        """Where the best of an epoch measure's values is, in this direction: the earliest of
        equal ones, NaN never winning (the recorder's rule for a trial's best epoch, there in
        SQL); None when there is none."""
        pick = max if self.maximize else min  # both return the first of equal ones
        return pick((i for i, v in enumerate(values) if not math.isnan(v)),
                    key=values.__getitem__, default=None)

    def best_of(self, values: Sequence[float]) -> float | None:
        """The best of an epoch measure's values in this direction (NaN never wins)."""
        index = self.best_index(values)
        return None if index is None else values[index]

    def better(self, a: float, b: float) -> bool:
        """Whether `a` is strictly better than `b`."""
        return a > b if self.maximize else a < b


DEFAULT = (ObjectiveSpec("val_acc", "max"),)


def parse_objectives(study: dict[str, Any], where: str) -> tuple[ObjectiveSpec, ...]:
    """The objectives of a [study] table: `metric` (one objective) or `objectives` (a list of
    "measure:direction"); both at once is an error."""
    if "metric" in study and "objectives" in study:
        raise ConfigError(f"{where}: give [study] metric or objectives, not both")
    if "objectives" not in study:
        metric = study.get("metric", "val_acc")
        if metric not in EPOCH_MEASURES:
            raise ConfigError(f"{where}: unknown metric {metric!r} (choose from: "
                              f"{', '.join(EPOCH_MEASURES)}; for params or seconds_per_epoch "
                              "use objectives = [...])")
        return (ObjectiveSpec(metric, MEASURES[metric]),)
    items = study["objectives"]
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{where}: objectives must be a non-empty list such as "
                          '["val_acc:max", "params:min"]')
    specs = tuple(_parse_one(item, where) for item in items)
    measures = [s.measure for s in specs]
    repeated = sorted({m for m in measures if measures.count(m) > 1})
    if repeated:
        raise ConfigError(f"{where}: objectives name {', '.join(repeated)} more than once")
    if specs[0].measure not in EPOCH_MEASURES:
        raise ConfigError(f"{where}: the first objective must be val_acc or val_loss (its best "
                          f"epoch is the trial's value and picks the chosen trial), got "
                          f"{specs[0].measure!r}")
    return specs


def _parse_one(item: Any, where: str) -> ObjectiveSpec:
    if not isinstance(item, str):
        raise ConfigError(f"{where}: objectives: {item!r} is not a string like 'params:min'")
    measure, sep, direction = item.partition(":")
    measure, direction = measure.strip(), direction.strip()
    if measure not in MEASURES:
        raise ConfigError(f"{where}: objectives: unknown measure {measure!r} (choose from: "
                          f"{', '.join(MEASURES)})")
    if not sep:
        direction = MEASURES[measure]
    if direction not in DIRECTIONS:
        raise ConfigError(f"{where}: objectives: {item!r}: the direction must be max or min")
    return ObjectiveSpec(measure, direction)


def epoch_values(objectives: Sequence[ObjectiveSpec], epochs: Sequence[dict[str, float]],
                 n_params: int | None) -> tuple[float | int | None, ...]:
    """Each objective's value for a trial from its epochs (dicts with val_acc, val_loss,
    seconds) and parameter count: what the objective hands Optuna."""
    out: list[float | int | None] = []
    for spec in objectives:
        if spec.measure in EPOCH_MEASURES:
            out.append(spec.best_of([float(e[spec.measure]) for e in epochs]))
        elif spec.measure == "params":
            out.append(n_params)
        else:
            seconds = [float(e["seconds"]) for e in epochs]
            out.append(sum(seconds) / len(seconds) if seconds else None)
    return tuple(out)


def dominates(a: Sequence[float], b: Sequence[float],
              objectives: Sequence[ObjectiveSpec]) -> bool:
    """`a` is at least as good as `b` in every objective and better in one."""
    pairs = list(zip(a, b, objectives, strict=True))
    return (not any(spec.better(y, x) for x, y, spec in pairs)
            and any(spec.better(x, y) for x, y, spec in pairs))


def pareto_front(points: Sequence[tuple[Hashable, Sequence[float]]],
                 objectives: Sequence[ObjectiveSpec]) -> list[Hashable]:
    """The keys of the points no other point dominates, in the order given. Points sorted
    best-first on every objective in turn come before any point they could dominate, so each
    point is checked against the front found so far only (not against every point)."""
    def rank(point: tuple[Hashable, Sequence[float]]) -> tuple[float, ...]:
        return tuple(-v if s.maximize else v for v, s in zip(point[1], objectives, strict=True))

    front: list[tuple[Hashable, Sequence[float]]] = []
    for point in sorted(points, key=rank):
        if not any(dominates(kept[1], point[1], objectives) for kept in front):
            front.append(point)
    on_front = {key for key, _ in front}
    return [key for key, _ in points if key in on_front]
