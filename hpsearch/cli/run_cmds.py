"""`hpsearch run` (start or resume a study with local workers) and `hpsearch worker` (join one)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hpsearch.cli.app import DB_HELP, app

DEVICE_HELP = "auto (a GPU if present), cpu or cuda."


@app.command()
def run(
    study_file: Annotated[Path, typer.Argument(
        help="Study definition (TOML), e.g. studies/quick.toml.", metavar="STUDY.toml")],
    db: Annotated[str | None, typer.Option("--db", help=DB_HELP)] = None,
    workers: Annotated[int, typer.Option(
        help="Local worker processes; the CPU cores are divided between them.", min=1)] = 1,
    threads: Annotated[int | None, typer.Option(
        help="CPU threads per worker (default: cores / workers).", min=1)] = None,
    trials: Annotated[int | None, typer.Option(
        help="Total finished trials the study should reach (overrides n_trials; counts trials "
        "from earlier runs).", min=1)] = None,
    timeout: Annotated[float | None, typer.Option(
        help="Each worker stops starting new trials after this many seconds (default: the "
        "study file's [study] timeout, if any); a running trial finishes.", min=1)] = None,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    top: Annotated[int, typer.Option(help="Rows of the leaderboard printed at the end.",
                                     min=0)] = 10,
    log_dir: Annotated[Path, typer.Option(
        help="Folder for the workers' logs (one file per worker).")] = Path("hpsearch-logs"),
) -> None:
    """Start a study (or continue it: same name, same database) and run it to n_trials.

    Every epoch of every trial is written to the database as it finishes; Ctrl-C stops the
    workers cleanly, and running the same command again continues the study.
    """
    from rich.console import Console

    from hpsearch.config import load_study
    from hpsearch.db.engine import database_url, mask_url, normalise_url
    from hpsearch.launcher import failed_workers, start_workers, supervise
    from hpsearch.storage import prepare_study

    config = load_study(study_file)  # every check runs before anything is written
    _check_device(device)
    url = normalise_url(database_url(db))
    console = Console()
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own lines say what happens
    prepare_study(config, url, trials)
    if trials is not None:
        config.n_trials = trials
    # plain text, not markup: a URL such as postgresql://[::1]/db has brackets
    console.print(f"study {config.name} in {mask_url(url)}: {workers} worker(s), "
                  f"{config.n_trials} trials, sampler {config.sampler}, pruner {config.pruner}",
                  highlight=False, markup=False, soft_wrap=True)
    started = start_workers(config, url, workers, threads, device, timeout, log_dir)
    progress, interrupted = supervise(config, url, started, console)
    failures = failed_workers(started)
    for worker, last_line in failures:
        console.print(f"worker {worker.index} failed ({worker.log_path}): {last_line}",
                      style="red", highlight=False, markup=False, soft_wrap=True)
    if top:
        from hpsearch.cli.query_cmds import print_leaderboard
        from hpsearch.errors import HpsearchError

        console.print()
        try:
            print_leaderboard(url, config.name, top)
        except HpsearchError:
            if not failures:
                raise
            # the database broke under the workers: their lines above already say why
    if interrupted:
        console.print(f"Interrupted with {progress.finished}/{config.n_trials} trials finished;"
                      " run the same command to continue.")
        raise typer.Exit(130)
    if failures and progress.finished < config.n_trials:
        raise typer.Exit(1)


@app.command()
def worker(
    name: Annotated[str, typer.Argument(help="Name of an existing study in the database.")],
    db: Annotated[str | None, typer.Option("--db", help=DB_HELP)] = None,
    threads: Annotated[int | None, typer.Option(
        help="CPU threads (default: every available core).", min=1)] = None,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    timeout: Annotated[float | None, typer.Option(
        help="Each worker stops starting new trials after this many seconds (default: the "
        "study file's [study] timeout, if any); a running trial finishes.", min=1)] = None,
    worker_index: Annotated[int, typer.Option(
        help="Offsets the sampler seed so parallel workers draw different start-up points.",
        min=0)] = 0,
) -> None:
    """Join an existing study from any machine that reaches its database, and run trials
    until the study has its n_trials finished trials."""
    import logging

    import optuna

    from hpsearch.db.engine import database_url
    from hpsearch.runner import run_worker, worker_name
    from hpsearch.train import configure_threads

    _check_device(device)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # no "Context impl" noise on stderr
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    n = configure_threads(threads)
    typer.echo(f"worker {worker_name()} joins study {name!r} with {n} thread(s)")
    try:
        summary = run_worker(name, database_url(db), worker_index=worker_index, device=device,
                             timeout=timeout)
    except KeyboardInterrupt:
        typer.echo("interrupted; running trial marked failed", err=True)
        raise typer.Exit(130) from None
    typer.echo(f"worker done: {summary.complete} complete, {summary.pruned} pruned, "
               f"{summary.failed} failed")


def _check_device(device: str) -> None:
    from hpsearch.errors import ConfigError

    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"unknown device {device!r} (choose from: auto, cpu, cuda)")

