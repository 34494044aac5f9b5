"""`hpsearch evaluate`: the honest number. Retrain a trial on train + validation, test once."""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Annotated

import typer

from hpsearch.cli.app import INT_MAX, DbOption, DeviceOption, StudyArg, ThreadsOption, app
from hpsearch.errors import ConfigError
from hpsearch.limits import MAX_ENSEMBLE, MAX_SEEDS, check_epochs

if TYPE_CHECKING:
    from hpsearch.metrics import EpochMetrics
    from hpsearch.search.ensemble import EnsembleResult
    from hpsearch.search.evaluate import FinalResult
    from hpsearch.trainer.epochs_auto import AutoEpochs


def epochs_option(value: str | None) -> int | str | None:
    """--epochs: a count from 1 to INT_MAX, or 'auto' (api.evaluate's check)."""
    try:
        return check_epochs(value)
    except ConfigError as exc:
        raise typer.BadParameter(str(exc).removeprefix("epochs ")) from None


Selection = StrEnum("Selection", "top greedy")
Tta = StrEnum("Tta", "flip")


@app.command()
def evaluate(
    name: StudyArg,
    trial: Annotated[int | None, typer.Option(
        help="Trial number to evaluate, e.g. one from `hpsearch best NAME --pareto` (default: "
        "the study's best trial, as `hpsearch best` shows it).", min=0, max=INT_MAX)] = None,
    epochs: Annotated[str | None, typer.Option(
        help="Epochs of the retraining (default: the epoch at which the trial's first "
        "objective peaked; the learning rate of each epoch is the trial's, replayed), or "
        "'auto': the "
        "length at which the configuration, retrained on the training set less a held-out "
        "slice, scores best on that slice (up to twice the trial's length; see README), "
        "chosen before the test set is read.", callback=epochs_option,
        metavar="N|auto")] = None,
    seeds: Annotated[int, typer.Option(
        help="Retrain this many times (seeds: the study seed + 0..K-1) and report mean ± std. "
        "Results already stored for a seed and epoch count are reused, not retrained.",
        min=1, max=MAX_SEEDS)] = 1,
    ensemble: Annotated[int | None, typer.Option(
        help="Evaluate an ensemble of the K best trials (by the study's first objective, the "
        "rule of `hpsearch best`) beside the single best: each retrained on train + validation per "
        "seed, their softmax outputs averaged, the test set read once per seed.", min=2,
        max=MAX_ENSEMBLE, metavar="K")] = None,
    select: Annotated[Selection, typer.Option(
        help="With --ensemble: 'top' weighs the K trials equally; 'greedy' picks weights by "
        "greedy selection with replacement (Caruana et al. 2004) on validation predictions, "
        "retraining each candidate once on the study's train split first.")] = Selection.top,
    tta: Annotated[Tta | None, typer.Option(
        help="With --ensemble: also score the ensemble with test-time augmentation ('flip': "
        "outputs averaged with those of the mirrored test images), reported separately.")
    ] = None,
    db: DbOption = None,
    device: DeviceOption = "auto",
    threads: ThreadsOption = None,
) -> None:
    """Retrain a trial's configuration on the FULL training set (train + validation) and score
    it once on the test set; the result is stored and shown by trials, best, compare and report
    as "test acc (final)". With --ensemble K, the same for an ensemble of the K best trials,
    shown beside the single best by compare and report.

    The final weights are saved as CHECKPOINT_DIR/<study>/final-trial-N-seed-S.pt ([workers]
    checkpoint_dir of the study). Searching never reads the test set; only this command does.

    Examples:

        hpsearch evaluate try

        hpsearch evaluate try --trial 3 --seeds 3

        hpsearch evaluate try --ensemble 3 --select greedy --tta flip --seeds 3
    """
    _check_study(name, db)
    if ensemble is not None:
        if trial is not None:
            raise ConfigError("--trial and --ensemble exclude each other (an ensemble is made "
                              "of the K best trials)")
        _evaluate_ensemble(name, db, ensemble, select.value, epochs, seeds,
                           tta.value if tta else None, device, threads)
        return
    if tta is not None or select is not Selection.top:
        raise ConfigError("--select and --tta apply to --ensemble only")
    _evaluate_single(name, db, trial, epochs, seeds, device, threads)


def _check_study(name: str, db: str | None) -> None:
    """An unknown study (or a database without one) is one line before torch is imported."""
    from hpsearch.db.engine import database_url, normalise_url
    from hpsearch.db.migrate import ensure_schema, reading
    from hpsearch.db.queries import find_study

    url = normalise_url(database_url(db))
    ensure_schema(url, create=False)
    with reading(url) as conn:
        find_study(conn, name)


def run_final_models(name: str, db: str | None, seeds: int, ensemble: int, device: str,
                     threads: int | None) -> None:
    """The final models of an hours budget (`hpsearch run --hours`): what `hpsearch evaluate
    NAME --seeds S` does, or with `ensemble` K >= 2 `--ensemble K`."""
    if ensemble > 1:
        _evaluate_ensemble(name, db, ensemble, Selection.top.value, None, seeds, None, device,
                           threads)
    else:
        _evaluate_single(name, db, None, None, seeds, device, threads)


def _evaluate_single(name: str, db: str | None, trial: int | None, epochs: int | str | None,
                     seeds: int, device: str, threads: int | None) -> None:
    from rich.console import Console

    from hpsearch.search.evaluate import plan_evaluation, run_evaluation, summarise
    from hpsearch.trainer.runtime import configure_threads

    console = Console(stderr=True, highlight=False)
    n_threads = configure_threads(threads)

    def on_auto_epoch(m: EpochMetrics) -> None:
        console.print(f"held-out run: epoch {m.epoch:3d}  val acc {m.val_acc:.4f}  "
                      f"{m.seconds:.1f}s", markup=False)

    plan = plan_evaluation(name, db, trial=trial, epochs=epochs, seeds=seeds, device=device,
                           on_epoch=on_auto_epoch)
    if plan.auto is not None:
        typer.echo(f"--epochs auto: {plan.epochs} epoch(s) ({_auto_scores(plan.auto)})")
    value = "-" if plan.trial.value is None else f"{plan.trial.value:.4f}"
    typer.echo(f"study {plan.study.name!r}, trial {plan.trial.number} "
               f"({plan.study.objectives[0].title} {value} at "
               f"epoch {plan.trial.best_epoch}): retraining on train + validation for "
               f"{plan.epochs} epoch(s), {len(plan.seeds)} seed(s), {n_threads} thread(s)")

    def on_epoch(seed: int, metrics: EpochMetrics) -> None:
        console.print(f"seed {seed} epoch {metrics.epoch:3d}  train loss {metrics.train_loss:.4f}"
                      f" acc {metrics.train_acc:.4f}  lr {metrics.lr:.2e}  "
                      f"{metrics.seconds:.1f}s", markup=False)

    def on_result(result: FinalResult) -> None:
        how = "stored earlier" if result.stored else f"{result.seconds:.1f}s"
        typer.echo(f"seed {result.seed}: test acc {result.test_acc:.4f}, test loss "
                   f"{result.test_loss:.4f} ({how}; weights {result.checkpoint_path})")

    results = run_evaluation(plan, db, device=device, on_epoch=on_epoch, on_result=on_result)
    summary = summarise(plan, results)
    if summary.std is None:
        typer.echo(f"test acc (final): {summary.mean:.4f} (1 seed, {plan.epochs} epoch(s))")
    else:
        typer.echo(f"test acc (final): {summary.mean:.4f} ± {summary.std:.4f} "
                   f"(mean ± std over {summary.seeds} seeds, {plan.epochs} epoch(s))")


def _auto_scores(auto: AutoEpochs) -> str:
    """'held-out acc by length: 3: 0.81, 5: 0.84, ...; 12.3s'"""
    scores = ", ".join(f"{e}: {a:.4f}" for e, a in sorted(auto.scores.items()))
    return f"held-out acc by length: {scores}; {auto.seconds:.1f}s"


def _evaluate_ensemble(name: str, db: str | None, k: int, selection: str,
                       epochs: int | str | None,
                       seeds: int, tta: str | None, device: str, threads: int | None) -> None:
    from rich.console import Console

    from hpsearch.db.records import EvaluationSummary
    from hpsearch.search.ensemble import plan_ensemble, run_ensemble
    from hpsearch.trainer.runtime import configure_threads

    console = Console(stderr=True, highlight=False)
    n_threads = configure_threads(threads)

    def on_select_epoch(number: int, m: EpochMetrics) -> None:
        console.print(f"choosing: trial {number} epoch {m.epoch:3d}  val acc {m.val_acc:.4f}",
                      markup=False)

    plan = plan_ensemble(name, db, k=k, selection=selection, epochs=epochs, seeds=seeds,
                         tta=tta, device=device, on_epoch=on_select_epoch)
    members = ", ".join(f"trial {m.trial.number} ({m.params.epochs} ep, weight {m.weight:.2f})"
                        for m in plan.members)
    chosen = (f"; greedy selection's validation accuracy {plan.val_acc:.4f}"
              if plan.val_acc is not None else "")
    for m in plan.members:
        if m.auto is not None:
            typer.echo(f"--epochs auto: trial {m.trial.number}: {m.params.epochs} epoch(s) "
                       f"({_auto_scores(m.auto)})")
    typer.echo(f"study {plan.study.name!r}: ensemble of {len(plan.members)} of the "
               f"{plan.candidates} best trials ({selection}): {members}{chosen}; "
               f"{len(plan.seeds)} seed(s), {n_threads} thread(s)")

    def on_epoch(seed: int, number: int, m: EpochMetrics) -> None:
        console.print(f"seed {seed} trial {number} epoch {m.epoch:3d}  train loss "
                      f"{m.train_loss:.4f} acc {m.train_acc:.4f}  {m.seconds:.1f}s", markup=False)

    def on_result(r: EnsembleResult) -> None:
        how = "stored earlier" if r.stored else f"{r.seconds:.1f}s"
        tta_part = f", with {tta} {r.test_acc_tta:.4f}" if r.test_acc_tta is not None else ""
        single = f"{r.baseline_acc:.4f}" if r.baseline_acc is not None else "-"
        typer.echo(f"seed {r.seed}: single best {single}, ensemble test acc {r.test_acc:.4f}"
                   f"{tta_part} ({how})")

    results = run_ensemble(plan, db, device=device, on_epoch=on_epoch, on_result=on_result)
    lines = [(f"single best (trial {plan.baseline.trial.number})",
              [r.baseline_acc for r in results]),
             (f"ensemble ({len(plan.members)} trials)", [r.test_acc for r in results])]
    if tta:
        lines.append((f"ensemble + {tta}", [r.test_acc_tta for r in results]))
    for label, accs in lines:
        if any(a is None for a in accs):
            continue
        s = EvaluationSummary(0, 0, tuple(accs))
        spread = f" ± {s.std:.4f}" if s.std is not None else ""
        typer.echo(f"test acc {label}: {s.mean:.4f}{spread} ({s.seeds} seed(s))")
