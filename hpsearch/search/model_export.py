"""`hpsearch export-model` and `api.export_model`: a searched trial's model, without retraining.

A search keeps the model of each of its best `[workers] keep_models` trials at the trial's peak
epoch (the one its value was measured at) in the study's checkpoint folder; this copies one out
as a self-contained model file (`trainer.model_file`: weights, resolved params, seed, input
normalisation), with the study's record of the trial added.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hpsearch.db import queries
from hpsearch.db.engine import database_url, normalise_url
from hpsearch.db.migrate import reading
from hpsearch.errors import HpsearchError
from hpsearch.files import writable_target
from hpsearch.paths import model_path


@dataclass(frozen=True)
class ExportedModel:
    study: str
    trial: int
    epoch: int  # the epoch its weights are from: the trial's peak
    value: float | None  # the trial's first objective there
    objective: str  # its name, e.g. best_val_acc
    seed: int  # the seed the trial trained with
    path: Path  # where it was written


def export_model(name: str, out: str | Path, url: str | None = None, *,
                 trial: int | None = None) -> ExportedModel:
    """Write trial `trial`'s kept model (default: the study's best trial) to `out`."""
    from hpsearch.trainer.model_file import copy_model_file

    writable_target(out)  # a folder or a device is refused before anything is read

    with reading(normalise_url(database_url(url))) as conn:
        study = queries.find_study(conn, name)
        record = queries.chosen_trial(conn, study, trial, "to export")
    source = model_path(study.config.workers.checkpoint_dir, study.name, record.number)
    if not source.exists():
        raise HpsearchError(
            f"trial {record.number} of study {name!r} has no kept model ({source} is "
            f"missing): a search keeps its [workers] keep_models best trials' models; "
            f"`hpsearch evaluate {name} --trial {record.number}` retrains it instead")
    objective = study.objectives[0]
    state = copy_model_file(source, out, value=record.value, objective=objective.key,
                            dataset=study.dataset)
    return ExportedModel(study.name, record.number, int(state["epoch"]), record.value,
                         objective.key, int(state["seed"]), Path(out))
