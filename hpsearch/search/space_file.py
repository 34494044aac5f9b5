"""The [space] table of a study file: each parameter searched (a choice or a range) or fixed,
the conditions under which each acts, and the grid sampler's points. Every problem is one
ConfigError naming the key."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

from hpsearch.errors import ConfigError
from hpsearch.params import (
    APPLIES_WHEN,
    MODEL_ARGS,
    PARAM_NAMES,
    TrialParams,
    param_type,
)
from hpsearch.search.toml_values import prefixed, typed_value
from hpsearch.spec import Categorical, Conditions, Dimension, Range, StudyConfig

MAX_GRID_POINTS = 1_000_000  # Optuna's grid sampler lists every point up front


def parse_dimension(where: str, name: str, spec: Any) -> Dimension | Any:
    """A list → Categorical, a {low, high} table → Range, anything else → a fixed value."""
    if name not in PARAM_NAMES:
        raise ConfigError(
            f"{where}: unknown parameter {name!r} in [space] (known: {', '.join(PARAM_NAMES)})"
        )
    kind = param_type(name)
    label = f"{where}: space.{name}"
    if isinstance(spec, dict) and "choices" in spec:  # the table form of a list, for `when`
        if set(spec) != {"choices"}:
            raise ConfigError(f"{label}: a table with choices takes when, not "
                              f"{', '.join(sorted(set(spec) - {'choices'}))}")
        spec = spec["choices"]
        if not isinstance(spec, list):
            raise ConfigError(f"{label}: choices must be a list")
    if isinstance(spec, list):
        if not spec:
            raise ConfigError(f"{label}: an empty list has nothing to choose from")
        choices = tuple(typed_value(label, name, v, kind) for v in spec)
        if len(set(choices)) != len(choices):
            raise ConfigError(f"{label}: repeated choices in {spec}")
        for choice in choices:
            _check_value(label, name, choice)
        return Categorical(choices)
    if isinstance(spec, dict):
        unknown = sorted(set(spec) - {"low", "high", "log", "step"})
        if unknown:
            raise ConfigError(f"{label}: unknown key(s) {', '.join(unknown)} "
                              "(a range has low, high, log, step)")
        if "low" not in spec or "high" not in spec:
            raise ConfigError(f"{label}: a range needs both low and high")
        if kind not in (int, float):
            raise ConfigError(f"{label}: {name} is {kind.__name__}; give a list of choices")
        if name == "patch_size":
            raise ConfigError(f"{label}: patch sizes must divide the image; give a list")
        low, high = (typed_value(label, b, spec[b], kind) for b in ("low", "high"))
        log = typed_value(label, "log", spec.get("log", False), bool)
        step = typed_value(label, "step", spec["step"], kind) if "step" in spec else None
        if low > high:
            raise ConfigError(f"{label}: low ({low}) is greater than high ({high})")
        if log and low <= 0:
            raise ConfigError(f"{label}: a log range needs low > 0, got {low}")
        if step is not None and (step <= 0 or (log and step != 1)):
            raise ConfigError(f"{label}: step must be positive and cannot be combined with log")
        for bound in (low, high):
            _check_value(label, name, bound)
        if kind is int and step == 1:
            step = None  # every integer: one form, so a stored range compares equal
        return Range(low, high, log, step, is_int=kind is int)
    value = typed_value(label, name, spec, kind)
    _check_value(label, name, value)
    return value


def parse_model_args(config: StudyConfig, table: Any, where: str) -> dict[str, Any]:
    """[space.model_args]: the keyword arguments of a model factory, each a list of choices, a
    {low, high, log, step} range (of integers where low and high are) or a fixed value, stored
    as the parameters "model_args.<name>" that act where the model is a factory. Returns the
    `when` conditions declared on them."""
    label = f"{where}: space.{MODEL_ARGS}"
    factories = config.factories()
    if not isinstance(table, dict):
        raise ConfigError(f"{label} must be a table of the factory's keyword arguments")
    if table and not factories:
        raise ConfigError(f"{label}: arguments for a model factory, but model is not one "
                          "(model = \"module:function\")")
    declared: dict[str, Any] = {}
    for arg, spec in table.items():
        name, where_arg = f"{MODEL_ARGS}.{arg}", f"{label}.{arg}"
        if not arg.isidentifier() or arg in ("in_channels", "image_size", "num_classes"):
            raise ConfigError(f"{where_arg}: not a keyword argument name of its own")
        if isinstance(spec, dict) and "when" in spec:
            declared[name] = spec["when"]
            spec = {k: v for k, v in spec.items() if k != "when"}
        if isinstance(spec, dict) and "choices" in spec and set(spec) == {"choices"}:
            spec = spec["choices"]
        if isinstance(spec, list):
            if not spec or len(set(map(repr, spec))) != len(spec) or not all(
                    isinstance(v, bool | int | float | str) for v in spec):
                raise ConfigError(f"{where_arg}: choices must be distinct numbers, strings or "
                                  "booleans, at least one")
            config.space[name] = Categorical(tuple(spec))
        elif isinstance(spec, dict):
            config.space[name] = _model_arg_range(where_arg, spec)
        elif isinstance(spec, bool | int | float | str):
            config.fixed[name] = spec
        else:
            raise ConfigError(f"{where_arg}: a list of choices, a range or a value")
        config.conditions[name] = {"model": factories}
    return declared


def _model_arg_range(where: str, spec: dict[str, Any]) -> Range:
    if set(spec) - {"low", "high", "log", "step"} or not {"low", "high"} <= set(spec):
        raise ConfigError(f"{where}: a range has low and high (and log, step)")
    bounds = (spec["low"], spec["high"], spec.get("step", 1))
    is_int = all(isinstance(b, int) and not isinstance(b, bool) for b in bounds)
    low, high = (typed_value(where, b, spec[b], int if is_int else float)
                 for b in ("low", "high"))
    log = typed_value(where, "log", spec.get("log", False), bool)
    step = (typed_value(where, "step", spec["step"], int if is_int else float)
            if "step" in spec else None)
    if low > high or (log and low <= 0) or (step is not None and (step <= 0 or log)):
        raise ConfigError(f"{where}: needs low <= high, low > 0 with log, a positive step "
                          "without log")
    return Range(low, high, log, None if is_int and step == 1 else step, is_int=is_int)


def _check_value(label: str, name: str, value: Any) -> None:
    with prefixed(label):
        TrialParams.from_dict({name: value})


def parse_conditions(config: StudyConfig, declared: dict[str, Any], where: str) -> Conditions:
    """Which parameters act only under a choice of another: the trainer's own (APPLIES_WHEN)
    and the file's `when = {parameter = value or [values]}` on a searched one; all must hold.
    A searched parameter that can never act is an error: its trials would sample nothing."""
    conditions = {name: {parent: values} for name, (parent, values) in APPLIES_WHEN.items()}
    conditions.update({name: dict(on) for name, on in config.conditions.items()})  # model_args
    wanted_by_file: dict[tuple[str, str], tuple[Any, ...]] = {}  # the values `when` names
    for name, when in declared.items():
        label = f"{where}: space.{name}.when"
        if not isinstance(when, dict) or not when or name in config.fixed:
            raise ConfigError(f"{label} must be a table such as {{ optimizer = \"sgd\" }} on "
                              "a searched parameter")
        for parent, wanted in when.items():
            if (parent not in {*PARAM_NAMES, *config.space, *config.fixed}
                    or parent in (name, "epochs")):
                raise ConfigError(f"{label}: {parent!r} is not another parameter")
            if isinstance(config.space.get(parent), Range):
                raise ConfigError(f"{label}: {parent} is a range; a condition names a choice "
                                  "(a list in [space]) or a fixed value")
            values = tuple(v if parent not in PARAM_NAMES  # a model_arg: as the file has it
                           else typed_value(label, parent, v, param_type(parent))
                           for v in (wanted if isinstance(wanted, list) else [wanted]))
            own = conditions.setdefault(name, {})
            own[parent] = tuple(v for v in own.get(parent, values) if v in values)
            wanted_by_file[name, parent] = values
    for name in conditions:  # a parameter that depends on itself would never be resolved
        todo, seen = list(conditions[name]), set()
        while todo:
            parent = todo.pop()
            if parent == name:
                raise ConfigError(f"{where}: space.{name}: its conditions lead back to it")
            if parent not in seen:
                seen.add(parent)
                todo.extend(conditions.get(parent, {}))
    defaults = TrialParams().to_dict()
    for name in config.space:
        for parent, values in conditions.get(name, {}).items():
            dim = config.space.get(parent)
            can_be = (dim.choices if isinstance(dim, Categorical)
                      else (config.fixed.get(parent, defaults.get(parent)),))
            shown = (f"searched over {list(can_be)}" if dim else
                     f"fixed at {can_be[0]!r}" if parent in config.fixed else
                     f"{can_be[0]!r} by default")
            if not set(can_be) & set(values):
                raise ConfigError(f"{where}: space.{name} never acts: it acts only when {parent} "
                                  f"is {' or '.join(map(repr, values))}, and {parent} is {shown}")
            never = [v for v in wanted_by_file.get((name, parent), ()) if v not in can_be]
            if never:  # a typo beside a value it can take
                raise ConfigError(f"{where}: space.{name}.when: {parent} is never "
                                  f"{' or '.join(map(repr, never))}: it is {shown}")
    return conditions


def corner_combinations(config: StudyConfig, names: tuple[str, ...]
                        ) -> Iterator[dict[str, Any]]:
    """Every way the parameters `names` can act together in a trial, define-by-run: each
    searched one at each choice and range end (the checks of a value are intervals, so the
    ends stand for a range), under each choice of every parameter they depend on; every other
    searched one at its first. Yields each trial's resolved parameters."""
    relevant, todo = set(), list(names)
    while todo:  # the parameters whose values decide whether and how `names` act
        name = todo.pop()
        if name not in relevant:
            relevant.add(name)
            todo.extend(config.conditions.get(name, {}))
    pending: list[tuple[int, ...]] = [()]  # the picks (corner indices) to replay, depth first
    while pending:
        yield config.resolve(_replay(pending.pop(), relevant, pending))


def _replay(script: tuple[int, ...], relevant: set[str], pending: list[tuple[int, ...]]
            ) -> Callable[[str, Dimension], Any]:
    """StudyConfig.resolve's `choose` for one branch of corner_combinations: the corners that
    `script` lists, then at each new branch point the first, its others queued in `pending`."""
    picks: list[int] = []

    def choose(name: str, dim: Dimension) -> Any:
        corners = dim.choices if isinstance(dim, Categorical) else (dim.low, dim.high)
        if name not in relevant:
            return corners[0]
        if len(picks) < len(script):
            pick = script[len(picks)]
        else:
            pick = 0
            pending.extend((*picks, i) for i in range(1, len(corners)))
        picks.append(pick)
        return corners[pick]
    return choose


def grid_values(config: StudyConfig) -> dict[str, list[Any]]:
    """The grid sampler's search space: categorical choices and stepped ranges, expanded."""
    grid: dict[str, list[Any]] = {}
    total = 1
    for name, dim in config.space.items():
        step = getattr(dim, "step", None) or (1 if getattr(dim, "is_int", False) else None)
        if isinstance(dim, Categorical):
            count = len(dim.choices)
        elif step is not None and not dim.log:
            count = math.floor((dim.high - dim.low) / step + 1e-9) + 1
        else:
            raise ConfigError(f"grid sampler: space.{name} must be a list, an integer range or "
                              "a range with step")
        total *= count
        if total > MAX_GRID_POINTS:  # checked before listing: a tiny step would never finish
            raise ConfigError(f"grid sampler: the grid has more than {MAX_GRID_POINTS:,} points "
                              f"(at space.{name}); use larger steps or another sampler")
        grid[name] = (list(dim.choices) if isinstance(dim, Categorical)
                      else [dim.low + i * step for i in range(count)])
    return grid
