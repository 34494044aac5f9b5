"""The Python API: what the CLI does, for notebooks and scripts.

    from hpsearch import api

    name = api.create_study("studies/quick.toml")   # or a dict in the study-file form
    api.run_worker(name)                            # run trials in this process
    best = api.best_trial(name)                     # a plain record; best.params has them all
    front = api.pareto_front(name)                  # several objectives: the Pareto front
    frame = api.trials_dataframe(name)              # pandas, when it is installed
    api.export_model(name, "model.pt")              # the best trial's kept model, as a file
    model = api.load_model("model.pt")              # ready to predict, nothing retrained

Every function takes `db` (a SQLAlchemy URL; default: $HPSEARCH_DB, else sqlite:///hpsearch.db)
and raises `hpsearch.errors.HpsearchError` (ConfigError for bad input) with a one-line message.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpsearch.db import queries
from hpsearch.db.engine import database_url, normalise_url
from hpsearch.db.records import EpochRecord, ParetoFront, TrialRecord
from hpsearch.errors import ConfigError, HpsearchError

if TYPE_CHECKING:
    import pandas
    from sqlalchemy import Connection

    from hpsearch.search.model_export import ExportedModel
    from hpsearch.search.worker import WorkerSummary
    from hpsearch.trainer.model_file import LoadedModel

__all__ = ["EpochRecord", "ParetoFront", "TrialRecord", "best_trial", "create_study", "epochs",
           "export_model", "load_model", "pareto_front", "run_worker", "trials",
           "trials_dataframe"]


def create_study(study: str | Path | dict[str, Any], db: str | None = None, *,
                 trials: int | None = None) -> str:
    """Create a study (or find it again: same name, same database) without training anything.

    Args:
        study: a study file (TOML) or the same content as a dict.
        db: results database URL.
        trials: finished trials the study should reach (overrides the file's n_trials).

    Returns:
        The study's name, for `run_worker` and the readers.
    """
    from hpsearch.search.study import prepare_study
    from hpsearch.search.study_file import read_study

    config = read_study(study)
    prepare_study(config, _url(db), trials)
    return config.name


def run_worker(name: str, db: str | None = None, *, device: str = "auto",
               timeout: float | None = None) -> WorkerSummary:
    """Run trials of study `name` in this process until it has its n_trials finished trials
    (or `timeout` seconds have passed). Other workers may join from anywhere.

    Returns:
        How many trials this worker completed, pruned and failed.
    """
    from hpsearch.params import check_device
    from hpsearch.search.study_file import check_timeout
    from hpsearch.search.worker import run_worker as run

    _check_name(name)
    check_device(device)
    return run(name, _url(db), device=device,
               timeout=check_timeout(timeout) if timeout is not None else None)


def trials(name: str, db: str | None = None) -> list[TrialRecord]:
    """Every trial of the study in number order, each with its full parameters."""
    _check_name(name)
    with _reading(db) as conn:
        return list(queries.iter_trials(conn, queries.find_study(conn, name)))


def best_trial(name: str, db: str | None = None) -> TrialRecord | None:
    """The study's best trial, by the same rule as `hpsearch best`; None before any finished."""
    _check_name(name)
    with _reading(db) as conn:
        return queries.best_trial(conn, queries.find_study(conn, name))


def pareto_front(name: str, db: str | None = None) -> ParetoFront:
    """The study's Pareto front, as `hpsearch best NAME --pareto` prints it: `trials` (best
    first objective first), `values` (trial number -> one value per objective), `chosen` (the
    trial `best_trial` returns) and `objectives`. For one objective: the trials tied for best."""
    _check_name(name)
    with _reading(db) as conn:
        return queries.pareto(conn, queries.find_study(conn, name))


def epochs(name: str, db: str | None = None) -> list[EpochRecord]:
    """Every epoch row of every trial of the study, ordered by trial number and epoch."""
    _check_name(name)
    with _reading(db) as conn:
        return list(queries.iter_epochs(conn, queries.find_study(conn, name)))


def trials_dataframe(name: str, db: str | None = None) -> pandas.DataFrame:
    """The study's trials as a pandas DataFrame, one column per field and `params.NAME` per
    parameter. Needs pandas (pip install pandas)."""
    try:
        import pandas
    except ImportError:
        raise HpsearchError("trials_dataframe needs pandas: pip install pandas") from None
    rows = []
    for trial in trials(name, db):
        row = {k: v for k, v in dataclasses.asdict(trial).items() if k != "params"}
        row.update({f"params.{k}": v for k, v in trial.params.items()})
        rows.append(row)
    return pandas.DataFrame(rows)


def export_model(name: str, path: str | Path, db: str | None = None, *,
                 trial: int | None = None) -> ExportedModel:
    """Write a trial's kept model (default: the best trial's; a search keeps its [workers]
    keep_models best) to `path`, as `hpsearch export-model` does: its weights at the trial's
    peak epoch, resolved params, seed and input normalisation in one file."""
    from hpsearch.search.model_export import export_model as export

    _check_name(name)
    return export(name, Path(path), _url(db), trial=trial)


def load_model(path: str | Path) -> LoadedModel:
    """The model in a file written by `export_model`, rebuilt from its params: `.model` (a
    torch module in eval mode, on the CPU), `.params`, `.info` (seed, epoch, metrics, study,
    trial...), and `.predict(images)` for uint8 images as the dataset stores them."""
    from hpsearch.trainer.model_file import load_model_file

    return load_model_file(Path(path))


def _url(db: str | None) -> str:
    """The database URL, checked as `--db` is (a wrong type is a ConfigError, not Python's
    TypeError from deep inside)."""
    if db is not None and not isinstance(db, str):
        raise ConfigError(f"db must be a database URL (text) or None, got {type(db).__name__}")
    return normalise_url(database_url(db))


def _check_name(name: object) -> None:
    if not isinstance(name, str):
        raise ConfigError(f"study name must be text, got {type(name).__name__}")


@contextmanager
def _reading(db: str | None) -> Iterator[Connection]:
    from hpsearch.db.migrate import reading

    with reading(_url(db)) as conn:
        yield conn
