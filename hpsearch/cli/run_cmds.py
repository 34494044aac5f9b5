"""`hpsearch run` (start or resume a study with local workers) and `hpsearch worker` (join one)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from hpsearch.cli.app import DbOption, DeviceOption, ThreadsOption, TimeoutOption, app, finite
from hpsearch.errors import ConfigError
from hpsearch.limits import MAX_THREADS, MAX_WORKERS, MIN_TRIALS
from hpsearch.params import INT_MAX, check_device

if TYPE_CHECKING:
    from rich.console import Console

    from hpsearch.search.hours import BudgetKeeper
    from hpsearch.search.study_changes import Change
    from hpsearch.spec import StudyConfig

@app.command()
def run(
    study_file: Annotated[Path, typer.Argument(
        help="Study definition (TOML), e.g. studies/quick.toml.", metavar="STUDY.toml")],
    db: DbOption = None,
    workers: Annotated[int | None, typer.Option(
        help="Local worker processes; the CPU cores are divided between them (default 1, or "
        "with GPUs one per GPU slot: GPUs × --workers-per-gpu).", min=1,
        max=MAX_WORKERS)] = None,
    threads: Annotated[int | None, typer.Option(
        help="CPU threads per worker (default: cores / workers).", min=1, max=MAX_THREADS)] = None,
    trials: Annotated[int | None, typer.Option(
        help="Total finished trials the study should reach (overrides n_trials; counts trials "
        "from earlier runs).", min=MIN_TRIALS, max=INT_MAX)] = None,
    timeout: TimeoutOption = None,
    hours: Annotated[float | None, typer.Option(
        help="Wall-clock budget in hours for the search AND the final models (default: the "
        "study file's [budget] hours, if any). The run plans the search, the final retraining "
        "and the ensemble ([budget] final: seeds, ensemble) inside it from the epoch times it "
        "measures: workers stop starting trials in time, a trial still running when the search "
        "time is over stops at the end of its epoch (pruned), then the run retrains the best "
        "trial (or the K best) on the whole training set and scores each model once on the "
        "test set, as `hpsearch evaluate --seeds S [--ensemble K]` does. n_trials and --timeout "
        "still end the search if they come first.", callback=finite)] = None,
    device: DeviceOption = "auto",
    gpus: Annotated[str | None, typer.Option(
        help="GPUs to place the workers on, round-robin, e.g. 0,1 (numbers as nvidia-smi "
        "counts them, or GPU-/MIG- UUIDs): each worker sees one GPU through "
        "CUDA_VISIBLE_DEVICES and trains on it. Default: [workers] gpus of the study file; "
        "none: every worker uses --device as it is.")] = None,
    workers_per_gpu: Annotated[int | None, typer.Option(
        help="Workers sharing one GPU (small models leave most of a GPU idle; default: "
        "[workers] workers_per_gpu of the study file, else 1).", min=1, max=64)] = None,
    top: Annotated[int, typer.Option(help="Rows of the leaderboard printed at the end.",
                                     min=0, max=INT_MAX)] = 10,
    log_dir: Annotated[Path, typer.Option(
        help="Folder for the workers' logs (one file per worker).")] = Path("hpsearch-logs"),
    update: Annotated[bool, typer.Option(
        "--update", help="Continue a study whose file was edited since it started, storing the "
        "file's settings: timeout, [budget] hours and final, sampler, pruner, [pruner], "
        "[workers] and data_dir. What a "
        "trial means (space, budget, seed, objectives, data) is stored once and never changes; "
        "n_trials is each run's (the file's, or --trials).")] = False,
) -> None:
    """Start a study (or continue it: same name, same database) and run it to n_trials, or
    with an hours budget (--hours, [budget] hours) search and train the final models inside it.

    Every epoch of every trial is written to the database as it finishes. Ctrl-C, SIGTERM
    (kill, docker stop, systemctl stop) and SIGHUP stop the workers cleanly (their running
    trials are marked, exit code 130, 143 or 129), and running the same command again
    continues the study.

    Examples:

        hpsearch run studies/try.toml

        hpsearch run studies/fashion-mnist-mixer.toml --workers 2

        hpsearch run studies/fashion-mnist-mixer-hours.toml --hours 2.5

        hpsearch run studies/try.toml --trials 12 --db postgresql+psycopg://hps@db-host/hps
    """
    from rich.console import Console

    from hpsearch.stop import install_stop_handlers

    install_stop_handlers()  # first: a stop while the study is prepared is a stop too
    began = time.time()  # an hours budget counts from here: preparing the study is spent too
    console = Console()
    try:
        _run(study_file, db, workers, threads, trials, timeout, device, top, log_dir, update,
             console, gpus, workers_per_gpu, hours, began)
    except KeyboardInterrupt as exc:  # a stop outside the workers' run (e.g. while preparing)
        from hpsearch.stop import exit_code, signal_name, signum_of

        console.print(f"Stopped by {signal_name(signum_of(exc))}; run the same command to "
                      "continue.", highlight=False, markup=False)
        raise typer.Exit(exit_code(signum_of(exc))) from None


def _run(study_file: Path, db: str | None, workers: int | None, threads: int | None,
         trials: int | None, timeout: float | None, device: str, top: int, log_dir: Path,
         update: bool, console: Console, gpus_option: str | None = None,
         per_gpu_option: int | None = None, hours_option: float | None = None,
         began: float | None = None) -> None:
    from hpsearch.cores import gpu_placement, worker_threads
    from hpsearch.db.engine import database_url, mask_url, normalise_url
    from hpsearch.files import writable_folder
    from hpsearch.paths import checkpoint_folder, study_slug
    from hpsearch.search.study_file import load_study, parse_gpus, parse_hours
    from hpsearch.stop import exit_code, signal_name, signum_of
    from hpsearch.trainer.data_files import missing_here
    from hpsearch.trainer.data_sources import is_local

    config = load_study(study_file)  # every check runs before anything is written
    hours = parse_hours(hours_option, "--hours") if hours_option is not None else config.hours
    if hours is not None and config.dry_run is not None:
        raise ConfigError("--hours does not combine with [dry_run] (its final models would "
                          "train for real)")
    check_device(device)
    gpus = parse_gpus(gpus_option, "--gpus") if gpus_option is not None else config.workers.gpus
    per_gpu = per_gpu_option or config.workers.workers_per_gpu
    if gpus and device == "cpu":
        raise ConfigError("--device cpu with GPUs to place workers on: drop one of the two")
    workers = workers or (len(gpus) * per_gpu if gpus else 1)
    gpu_placement(workers, gpus, per_gpu)  # checked before anything is written
    writable_folder(checkpoint_folder(config.workers.checkpoint_dir, config.name), "checkpoints")
    writable_folder(log_dir / study_slug(config.name), "worker logs")
    url = normalise_url(database_url(db))
    changes = _check_stored_config(config, url, update)
    done = None if hours is not None or changes else _nothing_to_do(url, config.name,
                                                                    trials or config.n_trials)
    if done is not None:  # no worker starts, so where they would run does not matter
        console.print(done, highlight=False, markup=False, soft_wrap=True)
        if top:
            from hpsearch.cli.query_cmds import print_leaderboard

            print_leaderboard(url, config.name, top, ranked=False)
        return
    # work to do: both splits read (and cached) before anything is written, a damaged file or
    # bad label one line; no torch for synthetic data or a dry run's data here, not the user's
    data = config.data
    if data.dataset != "synthetic" and (
            config.dry_run is None or missing_here(data) or is_local(data.dataset)):
        from hpsearch.trainer.data import read_ahead

        read_ahead(data)
    for factory in config.factories() if config.dry_run is None else []:
        from hpsearch.trainer.factory import check_factory_args  # imports the user's module

        check_factory_args(factory, config.model_args())
    import optuna

    from hpsearch.search.control import study_halt
    from hpsearch.search.launcher import (
        WorkerProcess,
        failed_workers,
        start_workers,
        stop_workers,
        supervise,
    )
    from hpsearch.search.study import prepare_study

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own lines say what happens
    prepare_study(config, url, trials)
    if trials is not None:  # this run's own n_trials, the settings an update stores included
        config.n_trials = trials
    if changes:
        from hpsearch.db.engine import make_engine
        from hpsearch.db.recorder import Recorder

        Recorder(make_engine(url)).replace_settings(config.name, config.settings_json())
        console.print(f"study {config.name}: stored settings updated from {study_file}:\n"
                      + "\n".join(c.line() for c in changes),
                      highlight=False, markup=False, soft_wrap=True)
    halt = study_halt(url, config.name)
    if halt is not None:  # no worker could start a trial: nothing to do
        console.print(halt.line(config.name), highlight=False, markup=False, soft_wrap=True)
        return
    # plain text, not markup: a URL such as postgresql://[::1]/db has brackets
    on_gpus = f" on GPU(s) {','.join(gpus)}" if gpus else ""
    console.print(f"study {config.name} in {mask_url(url)}: {workers} worker(s){on_gpus}, "
                  f"{'up to ' if hours else ''}{config.n_trials} trials, sampler "
                  f"{config.sampler}, pruner {config.pruner}"
                  f"{f' on {config.pruned.measure}' if config.multi_objective else ''}",
                  highlight=False, markup=False, soft_wrap=True)
    budget = (_budget(config, url, hours, console, began) if hours is not None else None)
    if budget is None:
        from hpsearch.search.hours import clear_limits_left_behind

        clear_limits_left_behind(url, config)
    started: list[WorkerProcess] = []
    try:
        start_workers(config, url, workers, threads, device, timeout, log_dir, started,
                      gpus, per_gpu)
        progress, stopped_by = supervise(config, url, started, console, budget)
    except KeyboardInterrupt as exc:  # outside supervise's own watch: still stop the workers
        stop_workers(started, signum_of(exc))
        if budget is not None:
            budget.finish(None)
        raise
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
            if not failures and stopped_by is None:
                raise
            # the database broke under the workers (their lines above already say why), or
            # the run was stopped during an outage: the stop is the result, not this
    if budget is not None:
        # the final models train with one worker's threads, as their price was measured: more
        # threads are not faster in proportion, and on a busy machine may be slower (measured:
        # 2 workers x 1 thread 2,570 images/s each, the final on 2 threads 980)
        _final_models(budget, db, stopped_by, progress.counts.get("complete", 0), device,
                      worker_threads(workers, threads), console)
    # asked only of a run that ended by itself: after a stop or a worker's failure the database
    # may be unreachable or broken, and the stop or the failure is the result
    halt = study_halt(url, config.name) if stopped_by is None and not failures else None
    if halt is not None:
        console.print(f"{halt.line(config.name)}; {progress.finished}/{config.n_trials} trials "
                      "finished", highlight=False, markup=False, soft_wrap=True)
    if stopped_by is not None:
        console.print(f"Stopped by {signal_name(stopped_by)} with {progress.finished}/"
                      f"{config.n_trials} trials finished; run the same command to continue.",
                      highlight=False, markup=False)
        raise typer.Exit(exit_code(stopped_by))
    if failures and progress.finished < config.n_trials:
        raise typer.Exit(1)
    if budget is not None and halt is None and not progress.counts.get("complete"):
        from hpsearch.errors import HpsearchError

        raise HpsearchError("no trial completed within the hours budget, so there is no final "
                            "model to retrain")


def _budget(config: StudyConfig, url: str, hours: float, console: Console,
            began: float | None) -> BudgetKeeper:
    """The hours budget's keeper, its first limits published before any worker starts."""
    from hpsearch.search.budget import clock
    from hpsearch.search.hours import BudgetKeeper

    budget = BudgetKeeper(config, url, hours, config.final, started=began)
    budget.update()
    console.print(f"hours budget {clock(hours * 3600)}: search, then the final models "
                  f"({config.final.describe()}, retrained on the whole training set and tested "
                  "once), planned from the epoch times measured as the search goes",
                  highlight=False, markup=False, soft_wrap=True)
    return budget


def _final_models(budget: BudgetKeeper, db: str | None, stopped_by: int | None, complete: int,
                  device: str, threads: int | None, console: Console) -> None:
    """After the search of an hours budget: the final models, then the budget's plan vs use."""
    from hpsearch.cli.evaluate_cmd import run_final_models
    from hpsearch.search.budget import clock

    budget.end_search()
    use = None
    try:
        if stopped_by is not None or complete == 0:  # (run says why, last)
            return
        final, planned = budget.final, budget.plan.final_s
        console.print(f"\nfinal models: {final.describe()}"
                      + (f", planned {clock(planned)}" if planned is not None else ""),
                      highlight=False, markup=False)
        run_final_models(budget.config.name, db, final.seeds, min(final.ensemble, complete),
                         device, threads)
        use = budget.use()
        console.print(use.line(), highlight=False, markup=False, soft_wrap=True)
    finally:
        budget.finish(use)


@app.command()
def worker(
    name: Annotated[str, typer.Argument(help="Name of an existing study in the database.")],
    db: DbOption = None,
    threads: ThreadsOption = None,
    device: DeviceOption = "auto",
    timeout: TimeoutOption = None,
    worker_index: Annotated[int, typer.Option(
        help="Offsets the sampler seed so parallel workers draw different start-up points.",
        min=0, max=MAX_WORKERS)] = 0,
) -> None:
    """Join an existing study from any machine that reaches its database, and run trials
    until the study has its n_trials finished trials.

    Ctrl-C, SIGTERM and SIGHUP end the running trial within seconds (failed, with the signal
    as its reason; queued again, to resume from its last checkpoint) and exit with 130, 143 or
    129.

    Examples:

        hpsearch worker try --db postgresql+psycopg://hps@db-host/hps

        hpsearch worker fashion-mnist-mixer --threads 4 --worker-index 1 --db postgresql+psycopg://hps@db-host/hps
    """
    from hpsearch.stop import install_stop_handlers

    # first: importing torch takes a second. The stop is checked between batches and trials
    install_stop_handlers(raise_at_once=False)
    try:
        _worker(name, db, threads, device, timeout, worker_index)
    except KeyboardInterrupt as exc:
        from hpsearch.stop import StudyHalted, exit_code, signal_name, signum_of

        if isinstance(exc, StudyHalted):  # `hpsearch study stop`: this worker's work is done
            typer.echo(f"worker leaves: {exc.reason}")
            return
        typer.echo(f"stopped by {signal_name(signum_of(exc))}; a trial it ended resumes from "
                   "its last checkpoint in the next run", err=True)
        raise typer.Exit(exit_code(signum_of(exc))) from None


def _worker(name: str, db: str | None, threads: int | None, device: str,
            timeout: float | None, worker_index: int) -> None:
    import logging
    import os

    from hpsearch.db.engine import database_url, normalise_url

    check_device(device)
    done = _nothing_to_do(normalise_url(database_url(db)), name)
    if done is not None:
        typer.echo(done)
        return
    import optuna

    from hpsearch.search.worker import run_worker, worker_name

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # no "Context impl" noise on stderr
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    gpu = os.environ.get("CUDA_VISIBLE_DEVICES")
    typer.echo(f"worker {worker_name()} joins study {name!r}"
               + (f" (CUDA_VISIBLE_DEVICES={gpu})" if gpu is not None else ""))
    summary = run_worker(name, database_url(db), worker_index=worker_index, device=device,
                         timeout=timeout, threads=threads)
    typer.echo(f"worker done: {summary.complete} complete, {summary.pruned} pruned, "
               f"{summary.failed} failed")


def _nothing_to_do(url: str, name: str, target: int | None = None) -> str | None:
    """The line to print when study `name` already has `target` finished trials (default: its
    stored n_trials), else None. From our rows alone, before Optuna, torch or any data."""
    from hpsearch.db.migrate import current_revision, ensure_schema, reading
    from hpsearch.db.queries import finished_trials

    if current_revision(url) is None:  # no study yet; made (or refused) by the command next
        return None
    ensure_schema(url)  # an older schema upgraded, as the command would next
    with reading(url) as conn:
        found = finished_trials(conn, name)
    if found is None or found[0] < (target or found[1]):
        return None
    done, target = found[0], target or found[1]
    return (f"study {name}: {done} of {target} trials finished already, nothing to run "
            "(raise n_trials, or pass --trials N, to go on)")


def _check_stored_config(config: StudyConfig, url: str, update: bool) -> list[Change]:
    """How the file differs from the stored study: printed, and raised unless they apply."""
    from hpsearch.db.engine import make_engine
    from hpsearch.db.migrate import current_revision, ensure_schema
    from hpsearch.db.recorder import Recorder
    from hpsearch.search.study_changes import check, compare
    from hpsearch.spec import StudyConfig

    if current_revision(url) is None:  # a new database: made once the data has been read
        return []
    ensure_schema(url)  # an older schema upgraded
    engine = make_engine(url)
    try:
        row = Recorder(engine).study_row(config.name)
    finally:
        engine.dispose()
    if row is None:
        return []
    changes = compare(StudyConfig.from_stored(config.name, row.spec, row.settings), config)
    try:
        check(changes, config.name, update)
    except ConfigError:
        typer.echo(f"study {config.name}: the file differs from the stored config:", err=True)
        for change in changes:
            typer.echo(f"{change.line()}{'' if change.compatible else '  (incompatible)'}",
                       err=True)
        raise
    return changes


