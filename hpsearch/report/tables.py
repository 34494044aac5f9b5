"""Query results as tables: rich for the terminal, Markdown, CSV and JSON.

A `Sheet` holds raw values (floats, datetimes, None); only the terminal and Markdown forms
format them for reading. CSV and JSON keep full precision so they round-trip to the numbers in
the database. A column key with a dot (`params.lr`) is a flat CSV header and a nested object in
JSON (`{"params": {"lr": ...}}`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from hpsearch.db.records import (
    EnsembleSummary,
    EpochRecord,
    EvaluationSummary,
    ParetoFront,
    RungStats,
    StudyInfo,
    StudyStats,
    StudySummary,
    TrialRecord,
)
from hpsearch.objectives import ObjectiveSpec
from hpsearch.params import DataOptions
from hpsearch.report.sheets import (
    Column,
    Sheet,
    fmt_acc,
    fmt_int,
    fmt_loss,
    fmt_plain,
    fmt_rate,
    fmt_sci,
    fmt_seconds,
    fmt_share,
    fmt_test,
    fmt_time,
)


def param_names(space: Mapping[str, Any], found: Iterable[Iterable[str]]) -> list[str]:
    """Sampled parameter names: the stored search space's order, then any other names `found`
    among the trials' sampled ones (a study whose space changed between runs)."""
    names = list(space)
    for keys in found:
        names.extend(k for k in keys if k not in names)
    return names


def studies_sheet(summaries: Sequence[StudySummary]) -> Sheet:
    columns = [
        Column("name", "study"), Column("dataset", "dataset"), Column("trials", "trials", fmt_int),
        Column("complete", "complete", fmt_int), Column("pruned", "pruned", fmt_int),
        Column("failed", "failed", fmt_int), Column("running", "running", fmt_int),
        Column("halted", "halted"), BEST_VALUE, OBJECTIVE_COLUMN,
        Column("created", "created", fmt_time),
        Column("last_activity", "last activity", fmt_time),
        Column("optuna", "optuna study"), Column("note", "note"),
    ]
    # a study whose Optuna half is gone is marked, and the line under the table says what to do
    rows = [(s.name, s.dataset, s.total, s.counts["complete"], s.counts["pruned"],
             s.counts["failed"], s.counts["running"], s.halted, s.best_value,
             objective_text(s.objectives), s.created_at,
             s.last_activity, "MISSING" if s.problem else "ok", s.note) for s in summaries]
    notes = [s.problem for s in summaries if s.problem]
    if not rows:
        notes.append("no studies in this database yet")
    return Sheet("studies", columns, rows, notes)


# a study's best value is its first objective's (the objective column says which)
BEST_VALUE = Column("best_value", "best", fmt_acc)
OBJECTIVE_COLUMN = Column("objective", "objective")


def objective_text(objectives: Sequence[ObjectiveSpec]) -> str:
    return ", ".join(o.label for o in objectives)


def value_column(spec: ObjectiveSpec) -> Column:
    """A trial's value of one objective: best_val_acc, best_val_loss, n_params, ..."""
    fmt = (fmt_int if spec.measure == "params" else fmt_seconds
           if spec.measure == "seconds_per_epoch" else fmt_acc)
    return Column(spec.key, spec.title, fmt, essential=True)


def objective_columns(study: StudyInfo, every: bool) -> list[Column]:
    """A trial's value of the first objective, and with `every` of the other ones too."""
    return [value_column(o) for o in (study.objectives if every else study.objectives[:1])]


def rest_columns(shown: Sequence[Column]) -> list[Column]:
    """What a trial's row holds besides its objectives and parameters (the trial's size,
    unless an objective column shows it)."""
    keys = {c.key for c in shown}
    return [c for c in REST_COLUMNS if c.key not in keys]


REST_COLUMNS = [Column("best_epoch", "at epoch"), Column("epochs_run", "epochs run"),
                Column("seconds", "time", fmt_seconds),
                Column("n_params", "parameters", fmt_int)]
# The test set is scored only by `hpsearch evaluate` (a retraining on train + validation), so this
# column stays apart from the validation accuracy the search optimised.
TEST_COLUMN = Column("test_acc_final", "test acc (final)", fmt_test, essential=True)
# marks the trial `queries.best_query` names
BEST_COLUMN = Column("is_best", "best", lambda v: "*" if v else "", essential=True)
REASON_COLUMN = Column("reason", "reason")  # why a pruned or failed trial ended
TAGS_COLUMN = Column("tags", "tags", lambda tags: ", ".join(tags or ()))
TRIAL_EXTRA = [
    Column("started_at", "started", fmt_time), Column("finished_at", "finished", fmt_time),
    Column("worker", "worker"), Column("device", "device"),
    # what the run really used ("auto" resolved), beside the params.precision it was given
    Column("precision", "precision used"), REASON_COLUMN,
    Column("retried_from", "retried from"), Column("optuna_trial_id", "optuna trial id"),
    TAGS_COLUMN, Column("note", "note"),
]
# on a terminal, this many parameters (the most important first) stay before the other columns
KEPT_PARAMS = 3


def _test_value(test: EvaluationSummary | None) -> dict[str, Any] | None:
    return test.to_dict() if test is not None else None


def _cells(study: StudyInfo, t: TrialRecord, *, best: int | None = None,
           tests: Mapping[int, EvaluationSummary] | None = None,
           values: Mapping[int, Sequence[float | None]] | None = None) -> dict[str, Any]:
    """Every value a trial's row may show, by column key."""
    known = (values or {}).get(t.number) or ()
    cells: dict[str, Any] = {f"params.{n}": v for n, v in t.params.items()}
    cells.update({o.key: known[i] if i < len(known) else None
                  for i, o in enumerate(study.objectives)})
    cells.update(
        number=t.number, state=t.state, best_epoch=t.best_epoch, epochs_run=t.epochs_run,
        seconds=t.seconds, n_params=t.n_params, is_best=t.number == best,
        test_acc_final=_test_value((tests or {}).get(t.number)), started_at=t.started_at,
        finished_at=t.finished_at, worker=t.worker, device=t.device, precision=t.precision,
        reason=t.reason, retried_from=t.retried_from, optuna_trial_id=t.optuna_trial_id,
        tags=list(t.tags), note=t.note)
    cells[study.objectives[0].key] = t.value  # the trial row's own, also while it runs
    return cells


def param_column(name: str, essential: bool = False) -> Column:
    """A parameter's column; blank on a trial that did not use it (a conditional one)."""
    return Column(f"params.{name}", name, lambda v: "" if v is None else fmt_plain(v),
                  essential=essential)


def trials_sheet(study: StudyInfo, records: Iterable[TrialRecord], names: Sequence[str], *,
                 full: bool = False, title: str = "",
                 tests: Mapping[int, EvaluationSummary] | None = None,
                 best: int | None = None, reasons: bool = False, tags: bool = False,
                 values: Mapping[int, Sequence[float | None]] | None = None) -> Sheet:
    """The leaderboard, its columns in the order that explains the ranking. `values`
    (`queries.objective_values`): every objective; `best`: the trial to mark; `names`: the
    parameters in order (on a terminal the first KEPT_PARAMS stay when columns are left out);
    `tests`: final test accuracies by trial number; `full` (exports): every stored column."""
    objectives = objective_columns(study, values is not None)
    columns = (
        [Column("number", "trial"), Column("state", "state"), *objectives]
        + ([BEST_COLUMN] if best is not None else [])
        + [param_column(n, i < KEPT_PARAMS) for i, n in enumerate(names)]
        + ([TEST_COLUMN] if tests else []) + rest_columns(objectives)
        + (TRIAL_EXTRA if full else [REASON_COLUMN] * reasons + [TAGS_COLUMN] * tags))
    return Sheet(title or f"{study.name}: trials", columns,
                 (tuple(cells.get(c.key) for c in columns)
                  for cells in (_cells(study, t, best=best, tests=tests, values=values)
                                for t in records)))


def front_sheet(study: StudyInfo, front: ParetoFront) -> Sheet:
    """The Pareto front: each trial's objective values, the chosen one marked, then the
    sampled parameters."""
    names = param_names(study.space, [t.sampled for t in front.trials])
    columns = [Column("number", "trial"), *(value_column(o) for o in front.objectives),
               Column("is_chosen", "chosen", lambda v: "*" if v else ""),
               Column("best_epoch", "at epoch"), *map(param_column, names)]
    rows = [(t.number, *front.values[t.number], t.number == front.chosen, t.best_epoch,
             *(t.params.get(n) for n in names)) for t in front.trials]
    notes = [f"{len(rows)} of {front.candidates} complete trials are on the front "
             f"(objectives {objective_text(front.objectives)}); chosen: the front's best in "
             "the first objective"]
    if not rows:
        notes = ["no complete trial yet"]
    return Sheet(f"{study.name}: Pareto front", columns, rows, notes)


EPOCH_COLUMNS = [
    Column("epoch", "epoch"), Column("train_loss", "train loss", fmt_loss),
    Column("train_acc", "train acc", fmt_acc), Column("val_loss", "val loss", fmt_loss),
    Column("val_acc", "val acc", fmt_acc), Column("lr", "lr", fmt_sci),
    Column("seconds", "time", fmt_seconds), Column("images_per_s", "images/s", fmt_rate),
]


def epochs_sheet(title: str, epochs: Iterable[EpochRecord], *, with_trial: bool) -> Sheet:
    columns = ([Column("trial", "trial")] if with_trial else []) + EPOCH_COLUMNS
    head = (lambda e: (e.trial_number,)) if with_trial else (lambda e: ())
    rows = (head(e) + (e.epoch, e.train_loss, e.train_acc, e.val_loss, e.val_acc, e.lr,
                       e.seconds, e.images_per_s) for e in epochs)
    return Sheet(title, columns, rows)


def trial_sheet(study: StudyInfo, trial: TrialRecord) -> Sheet:
    """One trial, every stored column and every parameter (sampled ones first, in the space's
    order, and marked), shown vertically."""
    sampled = param_names(study.space, [trial.sampled])
    names = [n for n in sampled if n in trial.sampled and n in trial.params]
    names += [n for n in trial.params if n not in names]
    sheet = trials_sheet(study, [trial], names, full=True,
                         title=f"{study.name}: trial {trial.number}")
    sheet.columns = [_marked(c, trial.sampled) for c in sheet.columns]
    sheet.rows = list(sheet.rows)
    sheet.vertical = True
    return sheet


def _marked(column: Column, sampled: Sequence[str]) -> Column:
    """A parameter column titled "name (sampled)" when the sampler chose its value."""
    head, _, name = column.key.partition(".")
    if head == "params" and name in sampled:
        return Column(column.key, f"{name} (sampled)", column.fmt)
    return column


def reason_line(trial: TrialRecord) -> str | None:
    if trial.reason:
        return f"{trial.state}: {trial.reason}"
    if trial.state in ("pruned", "failed"):
        return f"{trial.state}: no reason was recorded"
    return None


def best_sheet(study: StudyInfo, trial: TrialRecord, resolved: dict[str, Any],
               test: EvaluationSummary | None = None) -> Sheet:
    """The best trial and its FULL resolved params (fixed and sampled), and its final test
    accuracy when it was evaluated."""
    tests = {trial.number: test} if test is not None else None
    objectives = objective_columns(study, every=False)
    columns = [Column("study", "study"), Column("number", "trial"), Column("state", "state"),
               *objectives, *([TEST_COLUMN] if tests else []), *rest_columns(objectives),
               *(_marked(Column(f"params.{k}", k), trial.sampled) for k in resolved)]
    cells = (_cells(study, trial, tests=tests) | {"study": study.name}
             | {f"params.{k}": v for k, v in resolved.items()})
    return Sheet(f"{study.name}: best trial", columns, [tuple(cells.get(c.key) for c in columns)],
                 vertical=True)


ENSEMBLE_COLUMNS = [
    Column("ensemble_test_acc", "ensemble test acc", fmt_test),
    Column("ensemble_members", "ensemble members"),
    Column("ensemble_tta_test_acc", "ensemble + tta test acc", fmt_test),
]


def _ensemble_cells(ensemble: EnsembleSummary | None) -> tuple[Any, ...]:
    """The ensemble's test accuracy, its members ("3×0.40, 5×0.60 (greedy)") and its
    accuracy with test-time augmentation, in the shape fmt_test reads."""
    if ensemble is None:
        return None, None, None
    members = ", ".join(f"{m['trial']}×{m['weight']:.2f}" for m in ensemble.members)
    tta = None
    if ensemble.tta_accs:
        summary = EvaluationSummary(0, 0, ensemble.tta_accs)
        tta = {"mean": summary.mean, "std": summary.std, "seeds": summary.seeds,
               "tta": ensemble.tta}
    return ensemble.to_dict(), f"{members} ({ensemble.selection})", tta


def compare_sheet(stats: Sequence[StudyStats], names: Sequence[str]) -> Sheet:
    """Studies side by side; the single best trial's test accuracy and the ensemble's (when
    `hpsearch evaluate` stored them) stand next to each other."""
    tested = any(s.test is not None or s.ensemble is not None for s in stats)
    ensembled = any(s.ensemble is not None for s in stats)
    test_columns = ([TEST_COLUMN, Column("tested_trial", "tested trial")] if tested else [])
    test_columns += ENSEMBLE_COLUMNS if ensembled else []
    columns = [
        Column("study", "study"), Column("dataset", "dataset"), BEST_VALUE, OBJECTIVE_COLUMN,
        Column("best_trial", "best trial"),
        Column("best_epoch", "at epoch"), *test_columns, Column("trials", "trials", fmt_int),
        Column("complete", "complete", fmt_int), Column("pruned_share", "pruned", fmt_share),
        Column("compute_seconds", "compute time", fmt_seconds),
        Column("time_to_best_s", "time to best", fmt_seconds), *map(param_column, names),
    ]
    rows = []
    for s in stats:
        best = s.best
        test = ((_test_value(s.test), s.test.trial_number if s.test else None) if tested
                else ())
        test += _ensemble_cells(s.ensemble) if ensembled else ()
        rows.append((s.study.name, s.study.dataset, best.value if best else None,
                     objective_text(s.study.objectives), best.number if best else None,
                     best.best_epoch if best else None, *test, s.total, s.counts["complete"],
                     s.pruned_share, s.compute_seconds, s.time_to_best_s,
                     *((best.params.get(n) if best else None) for n in names)))
    title = ("studies compared" if len(rows) != 1
             else f"{rows[0][0]}: summary (best trial, counts, compute time)")
    return Sheet(title, columns, rows, vertical=True)


def rungs_sheet(title: str, rungs: Sequence[RungStats]) -> Sheet:
    """A multi-fidelity budget's rungs: how many trials trained on each fraction, how many of
    them went on to the next, and what each cost ("compute" counts an epoch on a fraction f
    as f of an epoch on the whole split)."""
    columns = [Column("rung", "rung"), Column("fraction", "fraction", fmt_share),
               Column("last_epoch", "up to epoch"), Column("trials", "trials", fmt_int),
               Column("promoted", "promoted", fmt_int), Column("epochs", "epochs", fmt_int),
               Column("compute_epochs", "compute (full epochs)", lambda v: f"{v:.1f}"),
               Column("seconds", "time", fmt_seconds),
               Column("best_val_acc", "best val acc", fmt_acc)]
    rows = [(i + 1, r.fraction, r.last_epoch, r.trials,
             rungs[i + 1].trials if i + 1 < len(rungs) else None, r.epochs,
             r.epochs * r.fraction, r.seconds, r.best_val_acc) for i, r in enumerate(rungs)]
    return Sheet(title, columns, rows)


def budget_sheet(title: str, use: Mapping[str, Any]) -> Sheet:
    """An hours budget's plan beside its use (search/budget.py's Use, as stored)."""
    hours, search, final = use["hours_s"], use["search_used_s"], use["final_used_s"]
    def fmt(value: float | None) -> str:  # a final not yet priced has no plan
        return "-" if value is None else fmt_seconds(value)
    columns = [Column("part", "part"), Column("planned", "planned", fmt),
               Column("used", "used", fmt), Column("share", "of the hours", fmt_share)]
    rows = [("search", use["search_planned_s"], search, search / hours),
            ("final models", use["final_planned_s"], final, final / hours),
            ("in all", hours, search + final, (search + final) / hours)]
    return Sheet(title, columns, rows)


# --- a retrainable config as TOML (the config itself: hpsearch.search.retrain) ----------

def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)  # TOML reads 1e-05, inf and nan as Python writes them
    # JSON string escapes are valid TOML basic-string escapes
    return json.dumps(str(value), ensure_ascii=False)


def best_toml(study: StudyInfo, trial: TrialRecord, params: dict[str, Any],
              data: DataOptions) -> str:
    value = "-" if trial.value is None else f"{trial.value:.4f}"
    lines = [
        f"# best trial of study {json.dumps(study.name, ensure_ascii=True)}: trial "
        f"{trial.number}, {study.objectives[0].title} {value} at epoch {trial.best_epoch}",
        "# retrain it with: hpsearch train --config THIS_FILE",
        f"seed = {trial.seed}  # the trial's: the study's seed plus its first attempt's number",
        f"split_seed = {study.seed}  # the study's: which images are held out for validation",
        "",
        "[params]",
        *(f"{k} = {toml_value(v)}" for k, v in params.items()),
        "",
        "[data]",
        *(f"{k} = {toml_value(v)}" for k, v in dataclasses.asdict(data).items()
          if v is not None),
    ]
    return "\n".join(lines) + "\n"
