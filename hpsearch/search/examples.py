"""The example studies shipped in the wheel, and `hpsearch init` writing one out.

The files are the repository's own studies/ and examples/ (hpsearch/_studies and
hpsearch/_examples link to them, as hpsearch/_alembic does to alembic/): one copy, read through
importlib.resources in a checkout and in an installed wheel alike.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from hpsearch.errors import HpsearchError


@dataclass(frozen=True)
class Example:
    """A study file in the package, and the factory module a `model = "module:function"` in it
    names (copied beside the study, so the study runs from the folder it is written to)."""

    folder: str  # package folder: "_studies" or "_examples"
    study: str  # file name of the study
    what: str  # one line for --help
    factory: str | None = None  # file name of its model factory, if it has one
    model_as_shipped: str = ""  # `model = ...` as the repository runs it (from its root)
    model_beside: str = ""  # the same factory imported from the folder init writes to


EXAMPLES = {
    "mixer": Example("_studies", "fashion-mnist-mixer.toml",
                     "the MLP-Mixer on Fashion-MNIST, sized for about 75 minutes on 2 cores"),
    "try": Example("_studies", "try.toml",
                   "a toy study on synthetic images, a few seconds per trial"),
    "cnn": Example("_examples", "cnn-fashion-mnist.toml",
                   "your own model: a small CNN by factory (cnn.py, written beside it)",
                   factory="cnn.py", model_as_shipped='model = "examples.cnn:small_cnn"',
                   model_beside='model = "cnn:small_cnn"'),
}
DEFAULT_EXAMPLE = "mixer"


def example_text(name: str) -> dict[str, str]:
    """The files of example `name` as init writes them: {file name: text}, the study first."""
    example = EXAMPLES[name]
    folder = files("hpsearch").joinpath(example.folder)
    study = folder.joinpath(example.study).read_text(encoding="utf-8")
    if example.factory is None:
        return {example.study: study}
    # tests/cli/test_init.py checks that the shipped file still says model_as_shipped
    return {example.study: study.replace(example.model_as_shipped, example.model_beside),
            example.factory: folder.joinpath(example.factory).read_text(encoding="utf-8")}


def write_example(name: str, path: str | Path | None = None) -> list[Path]:
    """Write example `name` to `path` (a file name, or an existing folder to write it into;
    default: the current folder), its factory module beside it. Refuses, writing nothing, when
    any of the files exists. Returns the paths written, the study first."""
    texts = example_text(name)
    study_name = next(iter(texts))
    target = Path(path) if path is not None else Path(study_name)
    if target.is_dir():
        target = target / study_name
    if not target.parent.is_dir():
        raise HpsearchError(f"cannot write {target}: folder {target.parent} does not exist")
    paths = [target] + [target.parent / file for file in list(texts)[1:]]
    for existing in (p for p in paths if os.path.lexists(p)):
        raise HpsearchError(f"{existing} exists; init does not overwrite: remove it or "
                            "give another path")
    written: list[Path] = []
    for dest, text in zip(paths, texts.values(), strict=True):
        try:
            with open(dest, "x", encoding="utf-8") as out:  # "x": never over a file made since
                written.append(dest)
                out.write(text)
        except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
            for done in written:  # nothing half-written
                done.unlink(missing_ok=True)
            raise HpsearchError(f"cannot write {dest}: {getattr(exc, 'strerror', None) or exc}"
                                ) from None
    return paths
