"""A study file edited between runs, compared with the config stored with the study.

Rerunning `hpsearch run FILE` continues the stored study, whose config the workers follow. If
the file no longer says the same, continuing silently would run one thing while the file (and
the run header) say another, so every difference is named and sorted into one of two kinds:

- compatible: changes how the search goes on, not what a trial means, so trials already
  recorded stay comparable with new ones: the trial target (n_trials), the per-worker timeout,
  the hours budget and its final models ([budget] hours, final),
  the sampler and the pruner (how the next points are chosen and when a weak trial stops; a
  recorded trial's epochs stay what they were), the heartbeat and retry options, the
  checkpoint folder and data_dir (where files are, not what they hold). Applied only with
  `--update`, which stores the new file as the study's config and records what changed.
- incompatible: changes what a trial is: the search space and fixed parameters, the epoch
  budget, the seed (each trial trains with seed + its number), the objectives, and the data
  (dataset, validation share, subset, synthetic size). Refused: such a study needs a new name.

Values are compared after parsing, with defaults filled in, so writing out a default that the
stored file left implicit (`precision = "fp32"`) is no change. No torch, no SQL here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from hpsearch.errors import ConfigError
from hpsearch.search.study_file import Categorical, Range, StudyConfig

COMPATIBLE_KEYS = {"study.n_trials", "study.timeout", "study.target", "study.sampler",
                   "study.pruner",
                   "data.data_dir", "budget.hours", "budget.final"}
COMPATIBLE_PREFIXES = ("workers.", "pruner.")


@dataclass(frozen=True)
class Change:
    key: str
    old: Any
    new: Any

    @property
    def compatible(self) -> bool:
        return self.key in COMPATIBLE_KEYS or self.key.startswith(COMPATIBLE_PREFIXES)

    def line(self) -> str:
        return f"  {self.key}: {_shown(self.old)} -> {_shown(self.new)}"


def settings(config: StudyConfig) -> dict[str, Any]:
    """Everything a study file decides, as dotted keys with defaults filled in."""
    out: dict[str, Any] = {
        "study.sampler": config.sampler, "study.pruner": config.pruner,
        "study.objectives": ", ".join(o.label for o in config.objectives),
        "study.n_trials": config.n_trials,
        "study.timeout": config.timeout, "study.seed": config.seed,
        "budget.max_epochs": config.max_epochs, "budget.min_epochs": config.min_epochs,
        "dry_run.seconds_per_epoch": config.dry_run,
    }
    out["budget.rungs"] = [dataclasses.astuple(r) for r in config.rungs]
    out["budget.hours"] = config.hours
    out["budget.final"] = dataclasses.asdict(config.final)
    out |= {f"pruner.{k}": v for k, v in config.pruner_options.items()}
    out |= {f"data.{k}": v for k, v in dataclasses.asdict(config.data).items()}
    out |= {f"workers.{k}": v for k, v in dataclasses.asdict(config.workers).items()}
    fixed = config.base_params().to_dict()  # every parameter, defaults included
    out |= {f"space.{k}": config.space.get(k, v) for k, v in fixed.items() if k != "epochs"}
    return out


def compare(stored: StudyConfig, new: StudyConfig) -> list[Change]:
    old_values, new_values = settings(stored), settings(new)
    keys = sorted(old_values.keys() | new_values.keys())
    return [Change(k, old_values.get(k), new_values.get(k)) for k in keys
            if old_values.get(k) != new_values.get(k)]


def check(changes: list[Change], name: str, update: bool) -> None:
    """Raise ConfigError unless the changes may be applied; the caller prints them first."""
    incompatible = [c.key for c in changes if not c.compatible]
    if incompatible:
        raise ConfigError(
            f"the study file no longer matches study {name!r}: {', '.join(incompatible)} "
            "changed what a trial means; restore the file, or give the study a new name")
    if changes and not update:
        raise ConfigError(
            f"the study file changed since study {name!r} started "
            f"({', '.join(c.key for c in changes)}); rerun with --update to apply and record "
            "the change")


def _shown(value: Any) -> str:
    if isinstance(value, Categorical):
        return "[" + ", ".join(_shown(v) for v in value.choices) + "]"
    if isinstance(value, Range):
        extra = (", log = true" if value.log else "") + (
            f", step = {_shown(value.step)}" if value.step is not None else "")
        return f"{{ low = {_shown(value.low)}, high = {_shown(value.high)}{extra} }}"
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, str) else str(value)
