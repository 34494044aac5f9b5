"""A study, resolved: what its trials mean (the spec) and how its search runs (the settings).

A study file is parsed once (hpsearch.search.study_file), when the study is created; from then on
the study row holds two JSON records and every reader reads those, never the file again:
- the spec, written once: the search space with its conditions, the fixed values, the
  objectives, the epoch budget, the seed, the data and a dry run's epoch time. Versioned
  (SPEC_VERSION): a later hpsearch reads it as written, and a migration upgrades old versions.
- the settings, which `hpsearch run --update` may change: sampler, pruner and its options,
  n_trials, the per-worker timeout, the target, the hours budget and its final models, the
  [workers] options and data_dir (where the data is, not what it is).
In the spec a dimension is Optuna's JSON form of its distribution, as optuna.distributions writes
it, so reports and warm starts hand it to Optuna as it is. No torch, Optuna or SQL here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hpsearch.errors import HpsearchError
from hpsearch.objectives import DEFAULT, ObjectiveSpec, parse_objectives
from hpsearch.params import FACTORY_PATH, MODEL_ARGS, PARAM_NAMES, DataOptions, TrialParams

SPEC_VERSION = 1


@dataclass(frozen=True)
class Categorical:
    choices: tuple[Any, ...]


@dataclass(frozen=True)
class Range:
    low: float
    high: float
    log: bool = False
    step: float | None = None  # None: continuous (an integer range: every integer)
    is_int: bool = False


Dimension = Categorical | Range
# parameter -> {the parameter it depends on: the values under which it acts}
Conditions = dict[str, dict[str, tuple[Any, ...]]]


@dataclass(frozen=True)
class WorkerOptions:
    heartbeat_interval: int = 30  # seconds between a running trial's heartbeats
    grace_period: int = 120  # seconds without a heartbeat before a trial counts as dead
    max_retry: int = 2  # re-runs of a trial whose worker died
    checkpoint_dir: str = "hpsearch-checkpoints"
    keep_models: int = 3  # the best trials whose peak-epoch model is kept (export-model)
    # `hpsearch run` on a GPU machine: the GPUs its local workers are placed on, round-robin
    # (CUDA_VISIBLE_DEVICES per worker), and how many workers may share one
    gpus: tuple[str, ...] = ()
    workers_per_gpu: int = 1


@dataclass(frozen=True)
class Rung:
    """One step of a multi-fidelity budget: train on the first `fraction` of the training split
    until the trial has run `epochs` epochs in all (cumulative)."""

    fraction: float
    epochs: int


@dataclass(frozen=True)
class FinalAsk:
    """`[budget] final = {seeds = 3, ensemble = 3}`: what the run retrains at its end, on the
    whole training set, each scored once on the test set."""

    seeds: int = 1
    ensemble: int = 1  # 1: the single best trial; K >= 2: the K best trials and their ensemble

    def describe(self) -> str:
        what = ("the best trial" if self.ensemble == 1
                else f"an ensemble of the {self.ensemble} best trials")
        return f"{what} x {self.seeds} seed(s)"


@dataclass
class StudyConfig:
    name: str
    sampler: str = "tpe"
    pruner: str = "hyperband"
    # what it optimises: the first objective is the trials' `value` and picks the chosen trial
    objectives: tuple[ObjectiveSpec, ...] = DEFAULT
    # which objective is reported each epoch and pruned on ([pruner] objective): an index into
    # objectives, of an epoch measure
    pruned_objective: int = 0
    n_trials: int = 20
    timeout: float | None = None  # seconds, per worker
    # the first objective's value that ends the search once a trial reaches it (search/control)
    target: float | None = None
    seed: int = 0
    min_epochs: int = 1
    pruner_options: dict[str, int] = field(default_factory=dict)  # [pruner], defaults filled in
    rungs: tuple[Rung, ...] = ()  # [budget] rungs: data fractions as a fidelity; () = epochs only
    # [budget] hours: search and final models inside these wall-clock hours (search/budget.py);
    # None: a count of trials (and a timeout), the final models left to `hpsearch evaluate`
    hours: float | None = None
    final: FinalAsk = field(default_factory=FinalAsk)  # [budget] final: what `hours` retrains
    data: DataOptions = field(default_factory=DataOptions)
    workers: WorkerOptions = field(default_factory=WorkerOptions)
    fixed: dict[str, Any] = field(default_factory=dict)
    space: dict[str, Dimension] = field(default_factory=dict)
    conditions: Conditions = field(default_factory=dict)
    # [dry_run] seconds_per_epoch: trials sleep this long per epoch and report a synthetic
    # learning curve instead of training (None: real training)
    dry_run: float | None = None

    @property
    def pruned(self) -> ObjectiveSpec:
        """The objective whose every-epoch value goes to Optuna and the pruner."""
        return self.objectives[self.pruned_objective]

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @property
    def max_epochs(self) -> int:
        return int(self.fixed["epochs"])

    def base_params(self) -> TrialParams:
        return TrialParams.from_dict(self.fixed)

    def factories(self) -> tuple[str, ...]:
        """The model factories ("module:function") a trial may build."""
        model = self.space.get("model")
        choices = (model.choices if isinstance(model, Categorical)
                   else (self.fixed.get("model", "mixer"),))
        return tuple(v for v in choices if isinstance(v, str) and FACTORY_PATH.fullmatch(v))

    def model_args(self) -> set[str]:
        """The names of the keyword arguments [space.model_args] gives a factory."""
        return {n.removeprefix(f"{MODEL_ARGS}.") for n in {**self.fixed, **self.space}
                if n.startswith(f"{MODEL_ARGS}.")}

    def resolve(self, choose: Callable[[str, Dimension], Any]) -> dict[str, Any]:
        """A trial's parameters, define-by-run: every parameter that acts in it, each after
        those it depends on, valued by `choose(name, dimension)` where searched, else fixed,
        else by default. One whose conditions do not hold does nothing in this trial: it is
        neither chosen nor kept."""
        defaults = TrialParams().to_dict()
        out: dict[str, Any] = {}
        model_args = tuple(sorted(f"{MODEL_ARGS}.{n}" for n in self.model_args()))
        for name in _parents_first(PARAM_NAMES + model_args, self.conditions):
            if all(out.get(parent, _INACTIVE) in allowed
                   for parent, allowed in self.conditions.get(name, {}).items()):
                out[name] = (self.fixed[name] if name in self.fixed
                             else choose(name, self.space[name]) if name in self.space
                             else defaults[name])
        return out

    def spec_json(self) -> dict[str, Any]:
        """What a trial of this study means, as stored once at its creation."""
        data = dataclasses.asdict(self.data)
        del data["data_dir"]  # where the files are: a setting
        return {
            "version": SPEC_VERSION,
            "space": {name: dimension_json(dim) for name, dim in self.space.items()},
            "conditions": {name: {parent: list(values) for parent, values in on.items()}
                           for name, on in self.conditions.items()},
            "fixed": dict(self.fixed),
            "objectives": [o.label for o in self.objectives],
            "pruned_objective": self.pruned.measure,
            "min_epochs": self.min_epochs,
            "rungs": [[r.fraction, r.epochs] for r in self.rungs],
            "seed": self.seed,
            "data": data,
            "dry_run": self.dry_run,
        }

    def settings_json(self) -> dict[str, Any]:
        """How the search runs: what `hpsearch run --update` may change."""
        return {"sampler": self.sampler, "pruner": self.pruner,
                "pruner_options": dict(self.pruner_options), "n_trials": self.n_trials,
                "timeout": self.timeout, "target": self.target, "hours": self.hours,
                "final": dataclasses.asdict(self.final),
                "workers": dataclasses.asdict(self.workers),
                "data_dir": self.data.data_dir}

    @classmethod
    def from_stored(cls, name: str, spec: dict[str, Any], settings: dict[str, Any]
                    ) -> StudyConfig:
        """The study as stored (spec_json and settings_json), read back without re-checking
        what was checked when it was written."""
        if spec.get("version") != SPEC_VERSION:
            raise HpsearchError(f"study {name!r}: its stored spec has version "
                                f"{spec.get('version')!r}; this hpsearch reads version "
                                f"{SPEC_VERSION} (upgrade hpsearch, or `hpsearch db upgrade`)")
        workers = dict(settings["workers"])
        workers["gpus"] = tuple(workers.get("gpus", ()))
        objectives = stored_objectives(spec)
        # specs stored before [pruner] objective existed prune on the first objective
        pruned = [o.measure for o in objectives].index(
            spec.get("pruned_objective", objectives[0].measure))
        return cls(
            name=name, sampler=settings["sampler"], pruner=settings["pruner"],
            objectives=objectives, pruned_objective=pruned, n_trials=settings["n_trials"],
            timeout=settings["timeout"], target=settings["target"], hours=settings["hours"],
            final=FinalAsk(**settings["final"]), seed=spec["seed"], min_epochs=spec["min_epochs"],
            pruner_options=dict(settings["pruner_options"]),
            rungs=tuple(Rung(f, e) for f, e in spec["rungs"]),
            data=DataOptions(**spec["data"], data_dir=settings["data_dir"]),
            workers=WorkerOptions(**workers), fixed=dict(spec["fixed"]),
            space={n: dimension_from_json(d) for n, d in spec["space"].items()},
            conditions={n: {p: tuple(v) for p, v in on.items()}
                        for n, on in spec["conditions"].items()},
            dry_run=spec["dry_run"])


def stored_objectives(spec: dict[str, Any]) -> tuple[ObjectiveSpec, ...]:
    """The objectives of a stored spec (labels such as "val_acc:max")."""
    return parse_objectives({"objectives": spec["objectives"]}, "stored spec")


_INACTIVE = object()  # the value of a parameter that does not act in a trial


def _parents_first(names: tuple[str, ...], conditions: Conditions) -> list[str]:
    """`names` ordered so that every parameter comes after those it depends on (the parse
    refuses cycles)."""
    placed: list[str] = []

    def place(name: str) -> None:
        if name in placed:
            return
        for parent in conditions.get(name, {}):
            place(parent)
        placed.append(name)
    for name in names:
        place(name)
    return placed


def dimension_json(dim: Dimension) -> dict[str, Any]:
    """Optuna's JSON form of a dimension's distribution (optuna.distributions.
    distribution_to_json writes the same)."""
    if isinstance(dim, Categorical):
        return {"name": "CategoricalDistribution", "attributes": {"choices": list(dim.choices)}}
    if dim.is_int:
        return {"name": "IntDistribution", "attributes": {
            "log": dim.log, "step": int(dim.step or 1), "low": int(dim.low),
            "high": int(dim.high)}}
    return {"name": "FloatDistribution", "attributes": {
        "step": dim.step, "low": dim.low, "high": dim.high, "log": dim.log}}


def dimension_from_json(stored: dict[str, Any]) -> Dimension:
    attributes = stored["attributes"]
    if stored["name"] == "CategoricalDistribution":
        return Categorical(tuple(attributes["choices"]))
    is_int = stored["name"] == "IntDistribution"
    step = attributes.get("step")
    return Range(attributes["low"], attributes["high"], bool(attributes.get("log")),
                 None if is_int and step == 1 else step, is_int)
