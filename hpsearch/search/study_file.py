"""Study definitions (TOML), validated before anything is written (single-run files:
hpsearch.search.run_file).

A study file has the tables [study], [data], [budget], [workers], [pruner], [space] and, for a
dry run (a cluster set-up tested without training, see hpsearch/search/dryrun.py), [dry_run]. In
[space] a list is a categorical choice, a table with low/high (and optional log, step) is a
range, a scalar is a fixed value, and `when` makes a searched one act only under a choice of
another (hpsearch.search.space_file). Every key is checked; mistakes are ConfigError with a
message that names the key.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Any

from hpsearch.errors import ConfigError
from hpsearch.limits import MIN_TIMEOUT_S, MIN_TRIALS
from hpsearch.objectives import EPOCH_MEASURES, ObjectiveSpec, parse_objectives
from hpsearch.params import (
    CHECKED_TOGETHER,
    MIN_TRAIN_IMAGES,
    MODEL_ARGS,
    PARAM_NAMES,
    DataOptions,
    DatasetFacts,
    TrialParams,
)
from hpsearch.search.budget import parse_final, parse_hours
from hpsearch.search.space_file import (
    corner_combinations,
    grid_values,
    parse_conditions,
    parse_dimension,
    parse_model_args,
)
from hpsearch.search.toml_values import (
    check_strings,
    check_table,
    choice_value,
    prefixed,
    read_toml,
    typed_value,
)
from hpsearch.spec import (
    Categorical,
    Range,
    Rung,
    StudyConfig,
    WorkerOptions,
)
from hpsearch.trainer.data_sources import dataset_facts

SAMPLERS = ("tpe", "nsga2", "random", "cmaes", "qmc", "grid")
MULTI_OBJECTIVE_SAMPLERS = ("tpe", "nsga2", "random", "qmc", "grid")  # Optuna's CMA-ES: one
PRUNERS = ("none", "median", "successive-halving", "hyperband")
# the [pruner] options each pruner takes: (default, smallest allowed value)
PRUNER_OPTIONS: dict[str, dict[str, tuple[int, int]]] = {
    "none": {},
    "median": {"startup_trials": (5, 0)},  # complete trials before any pruning
    "successive-halving": {"reduction_factor": (4, 2)},  # Optuna's default
    "hyperband": {"reduction_factor": (3, 2)},
}
# Study names are typed on command lines, shown in HTML and used in paths, so they are tame:
# letters, digits, spaces, '.', '-', '_'; no control characters (\w is Unicode-aware, so the
# printable check is explicit); not starting with '-' (`hpsearch worker --help` would be an
# option) nor with or ending in a space. Names recorded by other means are still found by the
# read commands, which only compare them.
NAME_PATTERN = re.compile(r"[\w.\- ]{1,200}")
MAX_SYNTHETIC_SIZE = 1_000_000  # images of the toy dataset: 0.8 GB of uint8 at this size
MAX_DRY_RUN_EPOCH_S = 3600.0


GPU_ID = re.compile(r"[A-Za-z0-9][\w:.-]{0,99}")  # 0, 1, GPU-<uuid>, MIG-<uuid>


def parse_gpus(value: Any, where: str) -> tuple[str, ...]:
    """GPU ids from `--gpus 0,1` or `[workers] gpus = [0, 1]`: numbers as nvidia-smi counts
    them, or GPU-/MIG- UUIDs; each once."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ConfigError(f"{where}: gpus must be a list of GPU ids, e.g. [0, 1]")
    if any(isinstance(item, bool | float) for item in items):
        raise ConfigError(f"{where}: gpus must be GPU ids such as 0 or \"GPU-<uuid>\"")
    gpus = tuple(str(item).strip() for item in items if str(item).strip() != "")
    for gpu in gpus:
        if not GPU_ID.fullmatch(gpu):
            raise ConfigError(f"{where}: gpus: {gpu!r} is not a GPU id (a number as "
                              "nvidia-smi counts them, or a GPU-/MIG- UUID)")
    if len(set(gpus)) != len(gpus):
        raise ConfigError(f"{where}: gpus: each GPU once, got {', '.join(gpus)}")
    return gpus


RUNG_PRUNERS = ("successive-halving", "hyperband")  # the pruners that promote across rungs
# [workers]: each option's (smallest, largest) value; the defaults are WorkerOptions'
WORKER_LIMITS: dict[str, tuple[int | None, int | None]] = {
    "heartbeat_interval": (1, None), "grace_period": (2, None), "max_retry": (0, None),
    "checkpoint_dir": (None, None), "keep_models": (0, 1000), "gpus": (None, None),
    "workers_per_gpu": (1, 64)}


def parse_workers(table: dict[str, Any], where: str) -> WorkerOptions:
    defaults, values = WorkerOptions(), {}
    for key, (low, high) in WORKER_LIMITS.items():
        value = table.get(key, getattr(defaults, key))
        values[key] = (parse_gpus(value, where) if key == "gpus" else typed_value(
            where, key, value, type(getattr(defaults, key)), minimum=low, maximum=high))
    return WorkerOptions(**values)


def parse_data(table: dict[str, Any], where: str) -> DataOptions:
    try:
        return DataOptions(
            dataset=typed_value(where, "dataset", table.get("dataset", "fashion-mnist"), str),
            data_dir=(typed_value(where, "data_dir", table["data_dir"], str)
                      if table.get("data_dir") is not None else None),
            val_fraction=typed_value(where, "val_fraction", table.get("val_fraction", 0.1),
                                     float),
            subset=(typed_value(where, "subset", table["subset"], int) if "subset" in table
                    else None),
            synthetic_size=typed_value(where, "synthetic_size",
                                       table.get("synthetic_size", 1200), int,
                                       minimum=50, maximum=MAX_SYNTHETIC_SIZE),
            synthetic_blend=typed_value(where, "synthetic_blend",
                                        table.get("synthetic_blend", 0.0), float),
        )
    except ConfigError as exc:
        raise ConfigError(str(exc) if str(exc).startswith(where) else f"{where}: {exc}") from None


def load_study(path: str | Path) -> StudyConfig:
    path = Path(path)
    return parse_study(read_toml(path, "study file"), str(path))


def read_study(study: object) -> StudyConfig:
    """A study given as a file path or as the file's content (a dict): the API's entrance."""
    if isinstance(study, dict):
        check_strings(study, "study")  # as read_toml checks a file's
        return parse_study(study, "study")
    if isinstance(study, str | Path):
        return load_study(study)
    raise ConfigError(f"study must be a study file's path or its content as a dict, "
                      f"got {type(study).__name__}")


def check_n_trials(value: object, where: str = "trials") -> int:
    """Finished trials a study should reach: 1..INT_MAX (a 32-bit column)."""
    return typed_value(where, "n_trials", value, int, minimum=MIN_TRIALS)


def check_timeout(value: object, where: str = "timeout") -> float:
    """A worker's seconds before it stops starting trials: finite, at least 1."""
    return typed_value(where, "timeout", value, float, minimum=MIN_TIMEOUT_S)


def parse_pruner_options(doc: dict[str, Any], pruner: str, where: str) -> dict[str, int]:
    """[pruner]: the options of the pruner named in [study] (`objective`: below)."""
    options = PRUNER_OPTIONS[pruner]
    value = doc.get("pruner", {})
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: [pruner] must be a table")
    for key in value:
        if key not in options and key != "objective":
            takes = ", ".join(["objective", *options])
            raise ConfigError(f"{where}: [pruner] {key} does not apply to pruner {pruner!r} "
                              f"(it takes: {takes})")
    return {key: typed_value(where, key, value.get(key, default), int, minimum=minimum)
            for key, (default, minimum) in options.items()}


def parse_pruned_objective(doc: dict[str, Any], objectives: tuple[ObjectiveSpec, ...],
                           where: str) -> int:
    """[pruner] objective = "val_loss": the objective whose every-epoch value goes to Optuna
    (its intermediate values, which optuna-dashboard draws) and to the pruner; one of the
    study's objectives measured every epoch, the first by default. Returns its index."""
    measures = [o.measure for o in objectives]
    name = doc.get("pruner", {}).get("objective", measures[0])
    reported = [m for m in measures if m in EPOCH_MEASURES]
    if name not in reported:
        raise ConfigError(f"{where}: [pruner] objective {name!r} is not one of the study's "
                          f"objectives measured every epoch (choose from: {', '.join(reported)})")
    return measures.index(name)


def parse_rungs(budget: dict[str, Any], pruner: str, where: str) -> tuple[Rung, ...]:
    """[budget] rungs = [{fraction = 0.1, epochs = 3}, ..., {fraction = 1.0, epochs = 15}]."""
    label = f"{where}: [budget] rungs"
    value = budget["rungs"]
    if not isinstance(value, list) or len(value) < 2:
        raise ConfigError(f"{label} must be a list of at least two tables "
                          "({fraction = ..., epochs = ...})")
    if pruner not in RUNG_PRUNERS:
        raise ConfigError(f"{label} need pruner {' or '.join(map(repr, RUNG_PRUNERS))} to "
                          f"promote trials between them, not {pruner!r}")
    if "min_epochs" in budget:
        raise ConfigError(f"{label}: min_epochs does not apply (trials are compared at the end "
                          "of each rung)")
    rungs: list[Rung] = []
    for i, item in enumerate(value, 1):
        where_i = f"{label}[{i}]"
        if not isinstance(item, dict) or set(item) != {"fraction", "epochs"}:
            raise ConfigError(f"{where_i} must be a table with exactly fraction and epochs")
        fraction = typed_value(where_i, "fraction", item["fraction"], float)
        epochs = typed_value(where_i, "epochs", item["epochs"], int, minimum=1)
        if not 0 < fraction <= 1:
            raise ConfigError(f"{where_i}: fraction must be in (0, 1], got {item['fraction']!r}")
        if rungs and (fraction <= rungs[-1].fraction or epochs <= rungs[-1].epochs):
            raise ConfigError(f"{where_i}: fraction and epochs must both grow from rung to rung "
                              f"(previous: fraction {rungs[-1].fraction}, epochs "
                              f"{rungs[-1].epochs})")
        rungs.append(Rung(fraction, epochs))
    if rungs[-1].fraction != 1.0:
        raise ConfigError(f"{label}: the last rung must train on the whole training split "
                          f"(fraction = 1.0), got {rungs[-1].fraction}")
    return tuple(rungs)


def check_study_name(name: Any, where: str = "study") -> str:
    """The rule for every new study name, in files and for `hpsearch study rename/copy`: it is
    shown in HTML and terminals and used in paths (see NAME_PATTERN); nothing that reads as an
    option, no control characters, no stray spaces at the ends."""
    if isinstance(name, str):  # stored composed, as every lookup finds it (study_named)
        name = unicodedata.normalize("NFC", name)
    if (not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or not name.isprintable()
            or name.startswith("-") or name != name.strip()):
        shown = repr(name) if len(repr(name)) <= 60 else f"{repr(name)[:57]}..."
        raise ConfigError(f"{where}: study name {shown} must be 1-200 letters, digits, spaces, "
                          "'.', '-' or '_', not start with '-' nor start or end with a space")
    return name


def _parse_target(study: dict[str, Any], multi: bool, where: str) -> float | None:
    if "target" not in study:
        return None
    if multi:
        raise ConfigError(f"{where}: [study] target stops a study of one objective; a Pareto "
                          "front has no single value to reach")
    return typed_value(where, "target", study["target"], float)


def _check_rung_sizes(config: StudyConfig, facts: DatasetFacts, where: str) -> None:
    """A rung on a handful of images ranks trials by noise (0.001 of a subset is one image)."""
    total = config.data.image_counts(facts.sizes).train
    for i, rung in enumerate(config.rungs, 1):
        images = max(1, round(total * rung.fraction))  # as TrainValData.train_fraction counts
        if images < MIN_TRAIN_IMAGES:
            raise ConfigError(f"{where}: [budget] rungs[{i}]: fraction {rung.fraction} trains "
                              f"on {images} of {total:,} training images; a rung needs at "
                              f"least {MIN_TRAIN_IMAGES}")


def parse_study(doc: dict[str, Any], where: str = "study") -> StudyConfig:
    unknown = sorted(set(doc) - {"study", "data", "budget", "workers", "pruner", "space",
                                 "dry_run"})
    if unknown:
        raise ConfigError(f"{where}: unknown table(s) {', '.join(unknown)} "
                          "(allowed: study, data, budget, workers, pruner, space, dry_run)")
    study = check_table(doc, "study", {"name", "sampler", "pruner", "metric", "objectives",
                                  "n_trials", "timeout", "target", "seed"}, where)
    if "name" not in study:
        raise ConfigError(f"{where}: [study] needs a name")
    name = check_study_name(study["name"], where)
    budget = check_table(doc, "budget", {"max_epochs", "min_epochs", "rungs", "hours", "final"},
                         where)
    workers = check_table(doc, "workers", set(WORKER_LIMITS), where)
    space_doc = dict(check_table(doc, "space", {*PARAM_NAMES, MODEL_ARGS}, where))
    model_args = space_doc.pop(MODEL_ARGS, {})
    dry_run = check_table(doc, "dry_run", {"seconds_per_epoch"}, where)
    if "epochs" in space_doc:
        raise ConfigError(f"{where}: set the epoch budget with [budget] max_epochs, not space")

    objectives = parse_objectives(study, where)
    multi = len(objectives) > 1
    if multi and "rungs" in budget:
        raise ConfigError(f"{where}: [budget] rungs cannot be combined with several objectives "
                          "(keep one objective or drop the rungs)")
    pruner = choice_value(where, "pruner", study.get("pruner", "hyperband"), PRUNERS)
    sampler = choice_value(where, "sampler", study.get("sampler", "tpe"), SAMPLERS)
    if multi and sampler not in MULTI_OBJECTIVE_SAMPLERS:
        raise ConfigError(f"{where}: sampler {sampler!r} takes one objective (for several "
                          f"choose from: {', '.join(MULTI_OBJECTIVE_SAMPLERS)})")
    rungs = parse_rungs(budget, pruner, where) if "rungs" in budget else ()
    if "hours" in budget and "dry_run" in doc:
        raise ConfigError(f"{where}: [budget] hours does not combine with [dry_run] (its final "
                          "models would train for real)")
    if rungs and "dry_run" in doc:
        raise ConfigError(f"{where}: [budget] rungs do not combine with [dry_run] (dry-run "
                          "trials keep no checkpoints to promote from)")
    default_max = rungs[-1].epochs if rungs else 10
    max_epochs = typed_value(where, "max_epochs", budget.get("max_epochs", default_max), int,
                             minimum=1)
    min_epochs = typed_value(where, "min_epochs", budget.get("min_epochs", 1), int, minimum=1)
    if min_epochs > max_epochs:
        raise ConfigError(f"{where}: min_epochs ({min_epochs}) exceeds max_epochs ({max_epochs})")
    if rungs and max_epochs != rungs[-1].epochs:
        raise ConfigError(f"{where}: max_epochs ({max_epochs}) must equal the last rung's epochs "
                          f"({rungs[-1].epochs}); leave it out with rungs")
    config = StudyConfig(
        name=name,
        sampler=sampler,
        pruner=pruner,
        pruner_options=parse_pruner_options(doc, pruner, where),
        rungs=rungs,
        objectives=objectives,
        pruned_objective=parse_pruned_objective(doc, objectives, where),
        n_trials=check_n_trials(study.get("n_trials", 20), where),
        timeout=check_timeout(study["timeout"], where) if "timeout" in study else None,
        target=_parse_target(study, multi, where),
        seed=typed_value(where, "seed", study.get("seed", 0), int, minimum=0),
        min_epochs=min_epochs,
        data=parse_data(check_table(doc, "data", {"dataset", "data_dir", "val_fraction", "subset",
                                             "synthetic_size", "synthetic_blend"}, where),
                        where),
        workers=parse_workers(workers, where),
        hours=parse_hours(budget["hours"], f"{where}: [budget]") if "hours" in budget else None,
        final=parse_final(budget, where),
        dry_run=(typed_value(where, "seconds_per_epoch", dry_run.get("seconds_per_epoch", 1.0),
                             float, minimum=0, maximum=MAX_DRY_RUN_EPOCH_S)
                 if "dry_run" in doc else None),
    )
    with prefixed(where):  # a folder or .npz file is read: a missing or malformed one is
        facts = dataset_facts(config.data)  # found before anything runs
    _check_rung_sizes(config, facts, where)
    if config.workers.grace_period <= config.workers.heartbeat_interval:
        raise ConfigError(f"{where}: grace_period must exceed heartbeat_interval")
    config.fixed["epochs"] = max_epochs
    declared: dict[str, Any] = {}  # [space] name = {..., when = {...}}
    for key, spec in space_doc.items():
        if isinstance(spec, dict) and "when" in spec:
            spec = {k: v for k, v in spec.items() if k != "when"}
            declared[key] = space_doc[key]["when"]
        dim = parse_dimension(where, key, spec)
        if isinstance(dim, Categorical | Range):
            config.space[key] = dim
        else:
            config.fixed[key] = dim
    declared.update(parse_model_args(config, model_args, where))
    config.conditions = parse_conditions(config, declared, where)
    _check_constraints(config, facts.shape, where)
    if config.sampler == "grid":
        with prefixed(where):
            grid_values(config)  # raises if the space has no grid
    return config


def _check_constraints(config: StudyConfig, shape: tuple[int, int, int], where: str) -> None:
    """Every trial the space can make must be a valid model for the dataset. Each value alone
    was checked as it was parsed; here every combination of the parameters checked together
    (CHECKED_TOGETHER), as trials resolve them: each choice and range end of each searched one,
    under each choice of those they depend on, fixed values and defaults elsewhere."""
    for group in CHECKED_TOGETHER:
        for applied in corner_combinations(config, group):
            try:
                TrialParams.from_dict(applied).check_image(config.data.dataset, shape)
            except ConfigError as exc:
                trial = ", ".join(f"{n} = {applied[n]!r}" for n in group if n in applied)
                raise ConfigError(f"{where}: a trial with {trial}: {exc}") from None
