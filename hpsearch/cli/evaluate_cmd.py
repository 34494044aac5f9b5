"""`hpsearch evaluate`: the honest number. Retrain a trial on train + validation, test once."""

from __future__ import annotations

from typing import Annotated

import typer

from hpsearch.cli.app import DB_HELP, INT_MAX, MAX_THREADS, app

MAX_SEEDS = 1000  # each seed is one full retraining


@app.command()
def evaluate(
    name: Annotated[str, typer.Argument(help="Study name (see `hpsearch studies`).",
                                        metavar="NAME")],
    trial: Annotated[int | None, typer.Option(
        help="Trial number to evaluate (default: the best complete trial by validation "
        "accuracy).", min=0, max=INT_MAX)] = None,
    epochs: Annotated[int | None, typer.Option(
        help="Epochs of the retraining (default: the epoch at which the trial's validation "
        "accuracy peaked; with a cosine schedule, the trial's full length).", min=1,
        max=INT_MAX)] = None,
    seeds: Annotated[int, typer.Option(
        help="Retrain this many times (seeds: the study seed + 0..K-1) and report mean ± std. "
        "Results already stored for a seed and epoch count are reused, not retrained.",
        min=1, max=MAX_SEEDS)] = 1,
    db: Annotated[str | None, typer.Option("--db", help=DB_HELP)] = None,
    device: Annotated[str, typer.Option(help="auto (a GPU if present), cpu or cuda.")] = "auto",
    threads: Annotated[int | None, typer.Option(
        help="CPU threads (default: every available core).", min=1, max=MAX_THREADS)] = None,
) -> None:
    """Retrain a trial's configuration on the FULL training set (train + validation) and score
    it once on the test set; the result is stored and shown by trials, best, compare and report
    as "test acc (final)".

    The final weights are saved as CHECKPOINT_DIR/<study>/final-trial-N-seed-S.pt ([workers]
    checkpoint_dir of the study). Searching never reads the test set; only this command does.
    """
    from rich.console import Console

    from hpsearch.evaluate import plan_evaluation, run_evaluation, summarise
    from hpsearch.runtime import configure_threads

    plan = plan_evaluation(name, db, trial=trial, epochs=epochs, seeds=seeds)
    console = Console(stderr=True, highlight=False)
    n_threads = configure_threads(threads)
    value = "-" if plan.trial.value is None else f"{plan.trial.value:.4f}"
    typer.echo(f"study {plan.study.name!r}, trial {plan.trial.number} (best val acc {value} at "
               f"epoch {plan.trial.best_epoch}): retraining on train + validation for "
               f"{plan.epochs} epoch(s), {len(plan.seeds)} seed(s), {n_threads} thread(s)")

    def on_epoch(seed: int, metrics) -> None:  # noqa: ANN001 - EpochMetrics
        console.print(f"seed {seed} epoch {metrics.epoch:3d}  train loss {metrics.train_loss:.4f}"
                      f" acc {metrics.train_acc:.4f}  lr {metrics.lr:.2e}  "
                      f"{metrics.seconds:.1f}s", markup=False)

    def on_result(result) -> None:  # noqa: ANN001 - FinalResult
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
