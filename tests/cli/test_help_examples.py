"""Every command's --help ends with examples, and every example is a command line that
hpsearch's own parser accepts (options that exist, values in range, required arguments given)."""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from typing import Any

import pytest
import typer.main

from hpsearch.cli import app

ROOT = typer.main.get_command(app)


def leaf_commands(command: Any = ROOT, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    subs = getattr(command, "commands", None)
    if not subs:
        yield path
    for name, sub in (subs or {}).items():
        yield from leaf_commands(sub, (*path, name))


def command_at(path: tuple[str, ...]) -> Any:
    command = ROOT
    for name in path:
        command = command.commands[name]
    return command


def examples(help_text: str) -> list[list[str]]:
    """The example command lines after "Examples:", as argv (without `hpsearch`), cut at a
    shell redirection or a comment in parentheses."""
    _, found, after = help_text.partition("Examples:")
    assert found, "no Examples section"
    lines = []
    for line in after.splitlines():
        if line.strip().startswith("hpsearch "):
            words = shlex.split(line, comments=True)[1:]
            cut = next((i for i, w in enumerate(words) if w.startswith(("(", ">", "|"))),
                       len(words))
            lines.append(words[:cut])
    return lines


@pytest.mark.parametrize("path", sorted(leaf_commands()), ids=" ".join)
def test_every_command_has_examples_that_its_parser_accepts(path: tuple[str, ...]) -> None:
    command = command_at(path)
    lines = examples(command.help or "")
    assert lines, f"hpsearch {' '.join(path)}: no example line under Examples:"
    for argv in lines:
        assert tuple(argv[:len(path)]) == path, f"an example of another command: {argv}"
        command.make_context(" ".join(path), argv[len(path):])  # raises on a bad line
