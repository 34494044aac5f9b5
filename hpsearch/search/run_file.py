"""Single-run configs for `hpsearch train`: one place resolves defaults → file → command line.

As nanoGPT's configurator does: the defaults of TrialParams/DataOptions, then a TOML file
([params] or [fixed], [data], top-level seed and split_seed; e.g. `hpsearch best --format
toml`), then `--set key=value` and the command's own options, each overriding the one before.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpsearch.errors import ConfigError
from hpsearch.params import MODEL_ARGS, DataOptions, TrialParams, coerce
from hpsearch.search.study_file import parse_data
from hpsearch.search.toml_values import prefixed, read_toml
from hpsearch.trainer.data_sources import dataset_facts


@dataclass(frozen=True)
class RunSeeds:
    """The seeds of one run: `seed` for the weights, shuffling and augmentation, `split_seed`
    for the train/validation split. A study trial trains with the study's seed plus its number
    and splits with the study's seed; `best --format toml` writes both."""

    seed: int | None = None
    split_seed: int | None = None


@dataclass(frozen=True)
class RunConfig:
    """One run, resolved and checked: what `hpsearch train` trains."""

    params: TrialParams
    data: DataOptions
    seed: int  # weights, shuffling, augmentation
    split_seed: int  # the train/validation split


def load_run_config(path: str | Path) -> tuple[dict[str, Any], dict[str, Any], RunSeeds]:
    """A single-run file: its [params] (or [fixed]), its [data], and the top-level `seed` and
    `split_seed`."""
    path = Path(path)
    doc = read_toml(path, "config file")
    allowed = {"params", "fixed", "data", "seed", "split_seed"}
    unknown = sorted(set(doc) - allowed)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) or table(s) {', '.join(unknown)} "
                          f"(allowed: {', '.join(sorted(allowed))})")
    for key in ("params", "fixed", "data"):
        if not isinstance(doc.get(key, {}), dict):
            raise ConfigError(f"{path}: [{key}] must be a table")
    with prefixed(str(path)):
        seeds = RunSeeds(*(coerce(key, doc[key], int) if key in doc else None
                           for key in ("seed", "split_seed")))
    params = {**doc.get("fixed", {}), **doc.get("params", {})}
    # `model_args.width = 24`, as `best --format toml` writes it, is a TOML dotted key: a table
    factory_args = params.pop(MODEL_ARGS, {})
    if not isinstance(factory_args, dict):
        raise ConfigError(f"{path}: {MODEL_ARGS} must be a table of the factory's arguments")
    params.update({f"{MODEL_ARGS}.{k}": v for k, v in factory_args.items()})
    return params, doc.get("data", {}), seeds


def parse_assignments(pairs: list[str]) -> dict[str, Any]:
    """--set key=value pairs; values are parsed as TOML scalars where they can be."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        try:
            out[key] = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            out[key] = text.strip()  # a bare word such as adamw
    return out


def resolve_run(path: Path | None = None, assignments: list[str] | None = None, *,
                params: dict[str, Any] | None = None, data: dict[str, Any] | None = None,
                seed: int | None = None) -> RunConfig:
    """The run that `path` (optional), the `--set` `assignments`, then the explicit `params`
    (e.g. {"epochs": 5}) and `data` options (e.g. {"subset": 1000}) describe; None values in
    those two are "not given". `seed` decides both seeds; else the file's (its split_seed
    defaults to its seed), else 0. Everything is checked, nothing is loaded."""
    values, data_table, seeds = load_run_config(path) if path else ({}, {}, RunSeeds())
    values.update(parse_assignments(assignments or []))
    values.update({k: v for k, v in (params or {}).items() if v is not None})
    data_table.update({k: str(v) if isinstance(v, Path) else v
                       for k, v in (data or {}).items() if v is not None})
    train_seed = seed if seed is not None else seeds.seed if seeds.seed is not None else 0
    split_seed = seed if seed is not None else (
        seeds.split_seed if seeds.split_seed is not None else train_seed)
    trial_params = TrialParams.from_dict(values)
    options = parse_data(data_table, "train")
    trial_params.check_image(options.dataset, dataset_facts(options).shape)
    return RunConfig(trial_params, options, train_seed, split_seed)
