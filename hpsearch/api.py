"""The Python API: what the CLI does, for notebooks and scripts, with the CLI's own checks.

    from hpsearch import api

    study = api.create_study("studies/quick.toml")  # or a dict in the study-file form
    study.run_worker(threads=2)                     # run trials in this process
    best = study.best_trial()                       # a plain record; best.params has them all
    front = study.pareto_front()                    # several objectives: the Pareto front
    frame = study.trials_dataframe()                # pandas, when it is installed
    study.enqueue(source="other-study", top=3)      # warm start: queue another study's best
    study.report("quick.html")                      # the offline HTML report
    final = study.evaluate(seeds=3)                 # retrain the best, score the test set
    study.export_model("model.pt")                  # the best trial's kept model, as a file
    model = api.load_model("model.pt")              # ready to predict, nothing retrained
    backup = study.copy("quick-backup")             # a Study too; .stop(), .pause(), .resume()
    backup.delete()

`api.study(name)` opens a stored study; every function is also there by study name
(`api.best_trial(name)`, `api.evaluate(name, seeds=3)`, ...). Every function takes `db` (a
SQLAlchemy URL; default: $HPSEARCH_DB, else sqlite:///hpsearch.db) and raises
`hpsearch.errors.HpsearchError` (ConfigError for bad input) with a one-line message.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpsearch.db import queries
from hpsearch.db.engine import database_url, normalise_url
from hpsearch.db.records import EpochRecord, EvaluationSummary, ParetoFront, TrialRecord
from hpsearch.errors import ConfigError, HpsearchError
from hpsearch.limits import MAX_ENSEMBLE, MAX_SEEDS, check_count, check_epochs, check_threads

if TYPE_CHECKING:
    import pandas
    from sqlalchemy import Connection

    from hpsearch.db.records import StudyInfo
    from hpsearch.search.ensemble import EnsembleResult
    from hpsearch.search.model_export import ExportedModel
    from hpsearch.search.warmstart import Queued
    from hpsearch.search.worker import WorkerSummary
    from hpsearch.trainer.model_file import LoadedModel

__all__ = ["EpochRecord", "EvaluationSummary", "ParetoFront", "Study", "TrialRecord",
           "best_trial", "copy_study", "create_study", "delete_study", "enqueue", "epochs",
           "evaluate", "evaluate_ensemble", "export_model", "load_model", "pareto_front",
           "pause_study", "report", "resume_study", "run_worker", "stop_study", "study",
           "trials", "trials_dataframe"]


def create_study(study: str | Path | dict[str, Any], db: str | None = None, *,
                 trials: int | None = None) -> Study:
    """Create a study from a study file (TOML) or the same content as a dict (or find it again:
    same name, same database) without training anything; `trials`: the finished trials it
    should reach (overrides the file's n_trials)."""
    from hpsearch.search.study import prepare_study
    from hpsearch.search.study_file import read_study

    config = read_study(study)
    prepare_study(config, _url(db), trials)
    return Study(config.name, db)


def study(name: str, db: str | None = None) -> Study:
    """The stored study `name` (a one-line error naming the known ones if there is none)."""
    with _study(name, db) as (_, found):
        return Study(found.name, db)


def run_worker(name: str, db: str | None = None, *, device: str = "auto",
               timeout: float | None = None, threads: int | None = None) -> WorkerSummary:
    """Run trials of study `name` in this process until it has its n_trials finished trials
    (or `timeout` seconds have passed) with `threads` CPU threads (default: every available
    core), as `hpsearch worker` does; returns how many it completed, pruned and failed.
    Other workers may join from anywhere."""
    from hpsearch.params import check_device
    from hpsearch.search.study_file import check_timeout
    from hpsearch.search.worker import run_worker as run

    _check_name(name)
    check_device(device)
    return run(name, _url(db), device=device, threads=check_threads(threads),
               timeout=check_timeout(timeout) if timeout is not None else None)


def trials(name: str, db: str | None = None) -> list[TrialRecord]:
    """Every trial of the study in number order, each with its full parameters."""
    with _study(name, db) as (conn, found):
        return list(queries.iter_trials(conn, found))


def best_trial(name: str, db: str | None = None) -> TrialRecord | None:
    """The study's best trial, by the same rule as `hpsearch best`; None before any finished."""
    with _study(name, db) as (conn, found):
        return queries.best_trial(conn, found)


def pareto_front(name: str, db: str | None = None) -> ParetoFront:
    """The study's Pareto front, as `hpsearch best NAME --pareto` prints it: `trials` (best
    first objective first), `values` (trial number -> one value per objective), `chosen` (the
    trial `best_trial` returns) and `objectives`. For one objective: the trials tied for best."""
    with _study(name, db) as (conn, found):
        return queries.pareto(conn, found)


def epochs(name: str, db: str | None = None) -> list[EpochRecord]:
    """Every epoch row of every trial of the study, ordered by trial number and epoch."""
    with _study(name, db) as (conn, found):
        return list(queries.iter_epochs(conn, found))


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
    if trial is not None:
        check_count("trial", trial, 0)
    return export(name, _check_path(path), _url(db), trial=trial)


def load_model(path: str | Path) -> LoadedModel:
    """The model in a file written by `export_model`, rebuilt from its params: `.model` (a
    torch module in eval mode, on the CPU), `.params`, `.info` (seed, epoch, metrics, study,
    trial...), and `.predict(images)` for uint8 images as the dataset stores them."""
    from hpsearch.trainer.model_file import load_model_file

    return load_model_file(Path(_check_path(path)))


def evaluate(name: str, db: str | None = None, *, trial: int | None = None,
             epochs: int | str | None = None, seeds: int = 1, device: str = "auto",
             threads: int | None = None) -> EvaluationSummary:
    """Retrain a trial (default: the best) on train + validation once per seed and score it
    once on the test set, as `hpsearch evaluate` does; results are stored (and reused).
    `epochs`: the retraining's length (default: the trial's peak epoch) or "auto"."""
    from hpsearch.params import check_device
    from hpsearch.search.evaluate import plan_evaluation, run_evaluation, summarise
    from hpsearch.trainer.runtime import configure_threads

    _check_name(name)
    check_device(device)
    if trial is not None:
        check_count("trial", trial, 0)
    epochs, seeds = check_epochs(epochs), check_count("seeds", seeds, 1, MAX_SEEDS)
    configure_threads(check_threads(threads))
    plan = plan_evaluation(name, _url(db), trial=trial, epochs=epochs, seeds=seeds,
                           device=device)
    return summarise(plan, run_evaluation(plan, _url(db), device=device))


def evaluate_ensemble(name: str, db: str | None = None, *, k: int, select: str = "top",
                      epochs: int | str | None = None, seeds: int = 1, tta: str | None = None,
                      device: str = "auto", threads: int | None = None
                      ) -> list[EnsembleResult]:
    """`hpsearch evaluate --ensemble K`: the K best trials retrained and their outputs
    averaged ("top": equal weights; "greedy": chosen on validation predictions), scored once
    per seed beside the single best; `tta="flip"` also scores with mirrored test images."""
    from hpsearch.params import check_device
    from hpsearch.search.ensemble import plan_ensemble, run_ensemble
    from hpsearch.trainer.runtime import configure_threads

    _check_name(name)
    check_device(device)
    k = check_count("k", k, 2, MAX_ENSEMBLE)
    epochs, seeds = check_epochs(epochs), check_count("seeds", seeds, 1, MAX_SEEDS)
    if select not in ("top", "greedy") or tta not in (None, "flip"):
        raise ConfigError(f"select must be 'top' or 'greedy' and tta None or 'flip', got "
                          f"{select!r} and {tta!r}")
    configure_threads(check_threads(threads))
    plan = plan_ensemble(name, _url(db), k=k, selection=select, epochs=epochs, seeds=seeds,
                         tta=tta, device=device)
    return run_ensemble(plan, _url(db), device=device)


def enqueue(study: str | Path, db: str | None = None, *,
            params: str | Path | dict[str, Any] | None = None, source: str | None = None,
            top: int = 1) -> list[Queued]:
    """Queue configurations to run first, as `hpsearch enqueue` does: `params` (a dict of
    parameter values, or the path of a file whose [params] table holds them) or the `top`
    best trials of another study (`source`). `study`: a stored study's name, or a study file
    (created in the database if new). Nothing is queued unless every configuration fits the
    study."""
    from hpsearch.search.study_file import load_study
    from hpsearch.search.toml_values import check_strings
    from hpsearch.search.warmstart import Candidate, candidates_from_file, candidates_from_study
    from hpsearch.search.warmstart import enqueue as queue

    if (params is None) == (source is None):
        raise ConfigError("give exactly one of params (a dict or a file) or source (another "
                          "study)")
    top = check_count("top", top, 1, 1000)
    url = _url(db)
    if isinstance(study, Path) or (isinstance(study, str) and study.endswith(".toml")):
        target: Any = load_study(study)
    else:
        _check_name(study)
        target = study
    if isinstance(params, dict):
        check_strings(params, "params")  # as a file's are
        candidates = [Candidate(dict(params), "params")]
    elif isinstance(params, str | Path):
        candidates = candidates_from_file(Path(params))
    elif params is not None:
        raise ConfigError(f"params must be a dict of parameter values or a file's path, got "
                          f"{type(params).__name__}")
    else:
        _check_name(source)
        candidates = candidates_from_study(url, source, top)
    return queue(url, target, candidates)


def report(names: str | list[str], path: str | Path = "report.html", db: str | None = None,
           *, split: bool = False, curves: int = 50) -> Path:
    """Write the offline HTML report of one or more studies, as `hpsearch report` does
    (`split`: one file per figure in the folder `path`). Returns what was written."""
    from hpsearch.db.migrate import reading
    from hpsearch.report.html import write_report, write_split
    from hpsearch.report.sections import build_report

    names = [names] if isinstance(names, str) else names
    if not isinstance(names, list | tuple) or not names:
        raise ConfigError(f"names must be a study name or a non-empty list of them, got "
                          f"{names!r}"[:120])
    for name in names:
        _check_name(name)
    curves = check_count("curves", curves, 1)
    _check_path(path)
    with reading(_url(db)) as conn:
        doc = build_report(conn, names, curves=curves)
    # the path as given: "out/" names a folder, which a single report refuses
    return write_split(doc, Path(path)) if split else Path(write_report(doc, path))


def delete_study(name: str, db: str | None = None) -> str:
    """Delete a study, hpsearch's rows and Optuna's study together, as `hpsearch study delete
    --yes` does (refused while its workers run). Returns what was done."""
    from hpsearch.db.lifecycle import delete_study as delete

    _check_name(name)
    return delete(_url(db), name)


def copy_study(name: str, new: str, db: str | None = None, *,
               to_db: str | None = None) -> Study:
    """Copy a study under the name `new` (into `to_db`, default the same database), as
    `hpsearch study copy` does. Returns the copy."""
    from hpsearch.db.lifecycle import copy_study as copy
    from hpsearch.search.study_file import check_study_name

    _check_name(name)
    check_study_name(new, "name of the copy")
    copy(_url(db), name, new, None if to_db is None else _url(to_db))
    return Study(new, db if to_db is None else to_db)


def stop_study(name: str, db: str | None = None) -> str:
    """`hpsearch study stop`: every worker, on every machine, ends its trial at the end of its
    epoch (kept, to resume) and leaves. Returns what was done."""
    return _set_halt(name, db, "stopped")


def pause_study(name: str, db: str | None = None) -> str:
    """`hpsearch study pause`: every worker finishes its trial, then leaves."""
    return _set_halt(name, db, "paused")


def resume_study(name: str, db: str | None = None) -> str:
    """`hpsearch study resume`: workers may start trials again."""
    return _set_halt(name, db, None)


def _set_halt(name: str, db: str | None, state: str | None) -> str:
    from hpsearch.search.control import set_halt

    _check_name(name)
    return set_halt(_url(db), name, state)


@dataclasses.dataclass(frozen=True)
class Study:
    """A stored study, by name and database: each function of this API for it."""

    name: str
    db: str | None = None

    def run_worker(self, **options: Any) -> WorkerSummary:
        """`api.run_worker` for this study (device, timeout, threads)."""
        return run_worker(self.name, self.db, **options)

    def trials(self) -> list[TrialRecord]:
        return trials(self.name, self.db)

    def best_trial(self) -> TrialRecord | None:
        return best_trial(self.name, self.db)

    def pareto_front(self) -> ParetoFront:
        return pareto_front(self.name, self.db)

    def epochs(self) -> list[EpochRecord]:
        return epochs(self.name, self.db)

    def trials_dataframe(self) -> pandas.DataFrame:
        return trials_dataframe(self.name, self.db)

    def evaluate(self, **options: Any) -> EvaluationSummary:
        """`api.evaluate` for this study (trial, epochs, seeds, device, threads)."""
        return evaluate(self.name, self.db, **options)

    def evaluate_ensemble(self, k: int, **options: Any) -> list[EnsembleResult]:
        return evaluate_ensemble(self.name, self.db, k=k, **options)

    def enqueue(self, **options: Any) -> list[Queued]:
        """`api.enqueue` into this study (params, or source and top)."""
        return enqueue(self.name, self.db, **options)

    def report(self, path: str | Path = "report.html", **options: Any) -> Path:
        return report(self.name, path, self.db, **options)

    def export_model(self, path: str | Path, *, trial: int | None = None) -> ExportedModel:
        return export_model(self.name, path, self.db, trial=trial)

    def copy(self, new: str, *, to_db: str | None = None) -> Study:
        return copy_study(self.name, new, self.db, to_db=to_db)

    def delete(self) -> str:
        return delete_study(self.name, self.db)

    def stop(self) -> str:
        return stop_study(self.name, self.db)

    def pause(self) -> str:
        return pause_study(self.name, self.db)

    def resume(self) -> str:
        return resume_study(self.name, self.db)


def _url(db: str | None) -> str:
    """The database URL, checked as `--db` is (a wrong type is a ConfigError, not Python's
    TypeError from deep inside)."""
    if db is not None and not isinstance(db, str):
        raise ConfigError(f"db must be a database URL (text) or None, got {type(db).__name__}")
    return normalise_url(database_url(db))


def _check_name(name: object) -> None:
    if not isinstance(name, str):
        raise ConfigError(f"study name must be text, got {type(name).__name__}")


def _check_path(path: object) -> str | Path:
    if not isinstance(path, str | Path):
        raise ConfigError(f"path must be a file's path (text or a Path), got "
                          f"{type(path).__name__}")
    return path


@contextmanager
def _study(name: str, db: str | None) -> Iterator[tuple[Connection, StudyInfo]]:
    """A read connection and the stored study `name` (a one-line error if there is none)."""
    from hpsearch.db.migrate import reading

    _check_name(name)
    with reading(_url(db)) as conn:
        yield conn, queries.find_study(conn, name)
