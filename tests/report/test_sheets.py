"""Fitting a wide table to a terminal: what a narrow terminal keeps and what it names."""

from __future__ import annotations

import io
import re

from rich.console import Console

from hpsearch.report.sheets import Column, Sheet, print_table

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _terminal(width: int) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=width, force_terminal=True, no_color=True), out


def _printed(out: io.StringIO) -> str:
    return ANSI.sub("", out.getvalue())  # bold and the like: not printed characters


def _header(text: str) -> list[str]:
    line = next(line for line in text.splitlines() if "┃" in line)
    return [cell.strip() for cell in line.split("┃")[1:-1]]


def test_a_narrow_terminal_keeps_essential_columns_before_others_in_their_order() -> None:
    columns = [Column("number", "trial"), Column("state", "state"), Column("value", "value"),
               Column("a", "a"), Column("test", "test acc", essential=True),
               Column("b", "b"), Column("c", "c")]
    row = (1, "complete", 0.9, "x" * 30, "0.9000 ± 0.0010 (3)", "y" * 30, "z")
    console, out = _terminal(70)
    print_table(Sheet("t", columns, [row]), console)
    text = _printed(out)
    # the essential column outranks the wide optional one before it; a narrow one still fits
    assert _header(text) == ["trial", "state", "value", "test acc", "c"]
    assert max(len(line) for line in text.splitlines()) <= 70
    assert "2 column(s) left out to fit 70 columns: a, b" in " ".join(text.split())


def test_a_wide_terminal_keeps_every_column() -> None:
    columns = [Column("number", "trial"), Column("a", "a"), Column("t", "t", essential=True)]
    console, out = _terminal(200)
    print_table(Sheet("t", columns, [(1, "x", "y")]), console)
    text = _printed(out)
    assert _header(text) == ["trial", "a", "t"] and "left out" not in text
