"""`hpsearch export-model`: a searched trial's model as one file, without retraining."""

from __future__ import annotations

from typing import Annotated

import typer

from hpsearch.cli.app import INT_MAX, DbOption, StudyArg, app


@app.command("export-model")
def export_model(
    name: StudyArg,
    trial: Annotated[int | None, typer.Argument(
        help="Trial number (default: the study's best trial, as `hpsearch best` shows it).",
        min=0, max=INT_MAX, show_default=False)] = None,
    # a str, not a Path: Path("out/") would drop the slash that says "a folder"
    output: Annotated[str, typer.Option(
        "--output", "-o", help="The model file to write (atomically: complete or not at all; "
        "its folder must exist).")] = "model.pt",
    db: DbOption = None,
) -> None:
    """Write a trial's kept model to one self-contained file: its weights at the trial's peak
    epoch, its resolved parameters, the seed it trained with and the input normalisation.
    A search keeps the models of its best [workers] keep_models trials (3 by default); load
    one with `hpsearch.api.load_model(PATH)`. Nothing is retrained and the test set is not
    read.

    Examples:

        hpsearch export-model try -o model.pt

        hpsearch export-model try 3 -o trial-3.pt
    """
    from hpsearch.search.model_export import export_model as export

    done = export(name, output, db, trial=trial)
    value = "-" if done.value is None else f"{done.value:.4f}"
    typer.echo(f"{done.path}: study {done.study!r}, trial {done.trial}, epoch {done.epoch} "
               f"({done.objective} {value}), seed {done.seed}")
