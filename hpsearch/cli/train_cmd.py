"""`hpsearch train`: one configuration, no study, one line per epoch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hpsearch.cli.app import INT_MAX, ThreadsOption, app, open_fraction


@app.command()
def train(
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="TOML file with a [params] (or [fixed]) table, an optional "
        "[data] table and optional top-level seed and split_seed, e.g. the output of "
        "`hpsearch best NAME --format toml`.")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", "-s", help="Override one parameter, key=value (repeatable), e.g. "
        "--set optimizer=adamw --set lr=3e-3.")] = None,
    epochs: Annotated[int | None, typer.Option(
        help="Number of epochs (overrides the config).", min=1, max=INT_MAX)] = None,
    dataset: Annotated[str | None, typer.Option(
        help="fashion-mnist (default), mnist, kmnist, cifar10, cifar100, svhn, synthetic (a "
        "tiny learnable toy set), or the path of an image folder (train/ and test/, a folder "
        "per class) or of a .npz file (x_train, y_train, x_test, y_test).")
    ] = None,
    data_dir: Annotated[Path | None, typer.Option(
        help="Folder holding the dataset files (else $HPSEARCH_DATA, Debian's package, download)."
    )] = None,
    subset: Annotated[int | None, typer.Option(
        help="Use only this many training images (before the validation split).", min=20,
        max=INT_MAX)] = None,
    val_fraction: Annotated[float | None, typer.Option(
        help="Share of the training set held out for validation, between 0 and 1 (default "
        "0.1).", callback=open_fraction)] = None,
    seed: Annotated[int | None, typer.Option(
        help="Seed for the split, init, shuffling (default: the config's seed and split_seed, "
        "else 0).", min=0, max=INT_MAX)] = None,
    device: Annotated[str, typer.Option(help="auto (GPU if present), cpu or cuda.")] = "auto",
    threads: ThreadsOption = None,
    checkpoint: Annotated[str | None, typer.Option(
        help="Write a checkpoint here after every epoch (atomically; a regular file: a device, "
        "folder or symlink out of its folder is refused); if it exists, resume from it.")
    ] = None,
) -> None:
    """Train one configuration on the training split and report validation metrics per epoch.

    The test set is never touched here (see `hpsearch evaluate`).

    Examples:

        hpsearch train --config best.toml

        hpsearch train --dataset synthetic --epochs 2 --set lr=0.003 --set hidden_dim=64
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from hpsearch.search.run_file import resolve_run
    from hpsearch.trainer import data as data_mod
    from hpsearch.trainer.checkpoint import load_checkpoint
    from hpsearch.trainer.loop import TrainingDiverged, fit
    from hpsearch.trainer.runtime import configure_threads, resolve_device

    run_config = resolve_run(config, set_, params={"epochs": epochs}, seed=seed,
                             data={"dataset": dataset, "data_dir": data_dir, "subset": subset,
                                   "val_fraction": val_fraction})
    checkpoint_path = None if checkpoint is None else Path(checkpoint)
    if checkpoint is not None:
        from hpsearch.files import writable_target

        writable_target(checkpoint)  # before training: a device or folder is refused at once
    resolve_device(device)  # an unknown name or a missing GPU: before any data is loaded

    resume = checkpoint_path if checkpoint_path is not None and checkpoint_path.exists() else None
    if resume is not None:
        load_checkpoint(resume)  # a damaged one is refused before anything starts

    console = Console(stderr=True)
    n_threads = configure_threads(threads)
    options = run_config.data
    data = data_mod.load_train_val(options, run_config.split_seed)
    console.print(f"[bold]{options.dataset}[/]: {len(data.train)} train / {len(data.val)} val "
                  f"images, {n_threads} thread(s)")

    with Progress("{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("epoch 1", total=None)

        def on_step(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        run = fit(run_config.params, data, seed=run_config.seed, device=device,
                  on_step=on_step, checkpoint=checkpoint_path, resume_from=resume)
        console.print(f"running on {run.setup.line()}", markup=False, highlight=False,
                      soft_wrap=True)
        try:
            for metrics in run:
                typer.echo(metrics.line())  # stdout; rich prints it above the live bar
                progress.update(task, description=f"epoch {metrics.epoch + 1}", completed=0)
        except TrainingDiverged as exc:
            console.print(f"[red]stopped: {exc}[/]")
            raise typer.Exit(3) from None
    best = run.best
    if best is not None:
        typer.echo(f"best val acc {best.val_acc:.4f} at epoch {best.epoch}; "
                   f"{run.n_params:,} parameters")
