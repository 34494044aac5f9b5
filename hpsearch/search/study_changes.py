"""A study file edited between runs, compared with the study as stored (hpsearch.spec).

Rerunning `hpsearch run FILE` continues the stored study; if the file no longer says the same,
every difference is named, and sorted: compatible settings change how the search goes on, not
what a trial means (timeout, target, hours budget, sampler, pruner, [workers], data_dir), and
are applied only with `--update`; any other change (the space, fixed values, epoch budget,
seed, objectives, the pruned objective, the data) is refused: such a study needs a new name.
n_trials is no difference: each run states its target.

Values are compared after parsing, with defaults filled in, so writing out a default that the
stored file left implicit (`precision = "fp32"`) is no change. No torch, no SQL here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from hpsearch.errors import ConfigError
from hpsearch.spec import Categorical, Range, StudyConfig

# what StudyConfig.settings_json holds; the rest is the spec, stored once
COMPATIBLE_KEYS = {"study.timeout", "study.target", "study.sampler", "study.pruner",
                   "data.data_dir", "budget.hours", "budget.final"}
COMPATIBLE_PREFIXES = ("workers.", "pruner.")
# under a compatible prefix, but what the trials' reported curves measure: the pruner would
# compare one measure's curves with another's
SPEC_KEYS = {"pruner.objective"}


@dataclass(frozen=True)
class Change:
    key: str
    old: Any
    new: Any

    @property
    def compatible(self) -> bool:
        return self.key not in SPEC_KEYS and (self.key in COMPATIBLE_KEYS
                                              or self.key.startswith(COMPATIBLE_PREFIXES))

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
    out |= {f"space.{name}.when": on for name, on in config.conditions.items()}
    out["budget.hours"] = config.hours
    out["budget.final"] = dataclasses.asdict(config.final)
    out |= {f"pruner.{k}": v for k, v in config.pruner_options.items()}
    out["pruner.objective"] = config.pruned.measure
    out |= {f"data.{k}": v for k, v in dataclasses.asdict(config.data).items()}
    out |= {f"workers.{k}": v for k, v in dataclasses.asdict(config.workers).items()}
    fixed = config.base_params().to_dict()  # every parameter, defaults included
    out |= {f"space.{k}": config.space.get(k, v) for k, v in fixed.items() if k != "epochs"}
    return out


def compare(stored: StudyConfig, new: StudyConfig) -> list[Change]:
    """The differences, but for n_trials: each run states its own target."""
    old_values, new_values = settings(stored), settings(new)
    old_values["study.n_trials"] = new_values["study.n_trials"]
    if not stored.conditions:  # made before conditional spaces: sampled flat, and stays so
        new_values = {k: v for k, v in new_values.items() if not k.endswith(".when")}
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
