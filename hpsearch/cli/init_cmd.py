"""`hpsearch init`: write a commented example study to start from."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from hpsearch.cli.app import app
from hpsearch.search.examples import DEFAULT_EXAMPLE, EXAMPLES

ExampleName = StrEnum("ExampleName", {name: name for name in EXAMPLES})  # type: ignore[misc]
DEFAULT = ExampleName(DEFAULT_EXAMPLE)
EXAMPLE_HELP = "Which example: " + "; ".join(
    f"{name}: {example.what} ({example.study})" for name, example in EXAMPLES.items()) + "."


@app.command(help="Write a commented example study file to start from (and, for an example "
             "with a model of its own, the model's file beside it). Refuses to overwrite "
             "an existing file. --example chooses which.\n\nExamples:\n\n"
             "hpsearch init  (writes fashion-mnist-mixer.toml here)\n\n"
             "hpsearch init my-study.toml --example try\n\n"
             "hpsearch init studies/ --example cnn  (cnn-fashion-mnist.toml and cnn.py)")
def init(
    path: Annotated[Path | None, typer.Argument(
        help="The study file to write, or an existing folder to write it into (default: the "
        "example's file name in the current folder).", metavar="PATH",
        show_default=False)] = None,
    example: Annotated[ExampleName, typer.Option(
        "--example", "-e", help=EXAMPLE_HELP)] = DEFAULT,
) -> None:
    from hpsearch.search.examples import write_example

    written = write_example(example.value, path)
    study = written[0]
    # a model factory is imported from the folder hpsearch runs in: the one written to
    run = f"hpsearch run {study}"
    if len(written) > 1 and study.parent.resolve() != Path.cwd().resolve():
        run = f"cd {study.parent} && hpsearch run {study.name}"
    typer.echo(f"wrote {', '.join(str(p) for p in written)}\nnext: edit it, then {run}")
