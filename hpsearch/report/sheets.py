"""Sheets: a table's columns and rows, and one way to write them in each format (a terminal
table fitted to its width, Markdown, CSV, TSV, JSON). Nothing here knows about studies."""

from __future__ import annotations

import csv
import html
import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TextIO

from hpsearch.errors import ConfigError


def _dash(fmt: Callable[[Any], str]) -> Callable[[Any], str]:
    return lambda value: "-" if value is None else fmt(value)


def fmt_plain(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, datetime):
        return fmt_time(value)
    return str(value)


fmt_acc = fmt_loss = _dash(lambda v: f"{v:.4f}")
fmt_int = _dash(lambda v: f"{v:,}")
fmt_sci = _dash(lambda v: f"{v:.3g}")
fmt_share = _dash(lambda v: f"{100 * v:.0f}%")
fmt_rate = _dash(lambda v: f"{v:,.0f}")
fmt_time = _dash(lambda v: v.strftime("%Y-%m-%d %H:%M:%S"))


@_dash
def fmt_test(value: dict[str, Any]) -> str:
    """A final test accuracy (EvaluationSummary.to_dict()): mean ± std over seeds."""
    seeds = f"{value['seeds']} seed{'s' if value['seeds'] != 1 else ''}"
    if value["std"] is None:
        return f"{value['mean']:.4f} ({seeds})"
    return f"{value['mean']:.4f} ± {value['std']:.4f} ({seeds})"


@_dash
def fmt_seconds(value: float) -> str:
    if value < 60:
        return f"{value:.1f}s"
    minutes, seconds = divmod(round(value), 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


@dataclass(frozen=True)
class Column:
    key: str  # CSV header and JSON key
    title: str  # terminal and Markdown header
    fmt: Callable[[Any], str] = fmt_plain
    # on a terminal too narrow for every column, kept before the other optional ones
    essential: bool = False


@dataclass
class Sheet:
    title: str
    columns: list[Column]
    rows: Iterable[Sequence[Any]]  # raw values; may be a generator (exports stream)
    notes: list[str] = field(default_factory=list)  # lines shown under the table
    vertical: bool = False  # show each record as a column (for one trial, or a few studies)

    def records(self) -> Iterable[dict[str, Any]]:
        for row in self.rows:
            yield nest({c.key: v for c, v in zip(self.columns, row, strict=True)})


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """{"params.lr": 1} → {"params": {"lr": 1}} (only the first dot splits)."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        head, dot, tail = key.partition(".")
        if dot:
            out.setdefault(head, {})[tail] = value
        else:
            out[key] = value
    return out


def write(sheet: Sheet, fmt: str, out: TextIO) -> None:
    """Write the sheet as md, csv, tsv or json (the terminal table has `print_table`)."""
    writers = {"md": write_markdown, "csv": write_csv, "tsv": write_tsv, "json": write_json}
    if fmt not in writers:
        raise ConfigError(f"unknown format {fmt!r} here (choose from: {', '.join(writers)})")
    writers[fmt](sheet, out)


# On a terminal a table is cut to fit: its first columns always stay, then the essential ones,
# then the others in order while they fit; a cell longer than CELL_MAX is shortened (the full
# text is in -f csv/json).
KEPT_COLUMNS = 3
CELL_MAX = 40


def print_table(sheet: Sheet, console: Any, *, fit: bool = True) -> None:
    """A rich table; cells are Text, so brackets in names are never read as rich markup.

    On a terminal (and with `fit`) a wide sheet drops the columns that do not fit its width,
    naming them in a note; otherwise every column is printed at its natural width (a file gets
    whole lines, never rows folded into letter-wide columns)."""
    from rich.table import Table
    from rich.text import Text

    headers, body = formatted(sheet)
    notes = list(sheet.notes)
    if fit and not sheet.vertical and console.is_terminal:
        essential = [c.essential for c in sheet.columns]
        headers, body, dropped = _fit(headers, [[_short(c) for c in row] for row in body],
                                      console.width, essential)
        if dropped:
            notes.append(f"{len(dropped)} column(s) left out to fit {console.width} columns: "
                         f"{', '.join(dropped)} (choose with --columns, or --all; -f csv, tsv "
                         "and json keep every column)")
    table = Table(title=Text(sheet.title) if sheet.title else None, title_justify="left")
    for i, header in enumerate(headers):
        table.add_column(Text(header), justify="left" if i == 0 or sheet.vertical else "right",
                         overflow="fold")
    for row in body:
        table.add_row(*(Text(cell) for cell in row))
    from rich.measure import Measurement

    natural = Measurement.get(console, console.options.update_width(10_000), table).maximum
    if not (fit and console.is_terminal):
        console.width = max(console.width, natural)
    console.print(table)
    for note in notes:
        console.print(Text(note), soft_wrap=not console.is_terminal)


def _short(cell: str) -> str:
    return cell if len(cell) <= CELL_MAX else cell[:CELL_MAX - 1] + "…"


def _fit(headers: list[str], body: list[list[str]], width: int, essential: list[bool]
         ) -> tuple[list[str], list[list[str]], list[str]]:
    """The columns that fit `width` (rich's default box: a border and one space of padding on
    each side of every cell), in their order, and the titles of those left out."""
    cells = [max((len(row[i]) for row in body), default=0) for i in range(len(headers))]
    if 1 + sum(max(len(h), c) + 3 for h, c in zip(headers, cells, strict=True)) > width:
        # too narrow for every column on one header line: headers wrap at their words
        headers = [_wrap(h, max(c, *map(len, _words(h)))) for h, c in
                   zip(headers, cells, strict=True)]
    needs = [max(c, *map(len, h.split("\n"))) + 3 for h, c in zip(headers, cells, strict=True)]
    used = 1 + sum(needs[:KEPT_COLUMNS])
    keep = set(range(min(KEPT_COLUMNS, len(headers))))
    optional = range(KEPT_COLUMNS, len(headers))
    for i in [i for i in optional if essential[i]] + [i for i in optional if not essential[i]]:
        if used + needs[i] <= width:
            keep.add(i)
            used += needs[i]
    kept = sorted(keep)
    dropped = [h.replace("_\n", "_").replace("\n", " ") for i, h in enumerate(headers)
               if i not in keep]
    return [headers[i] for i in kept], [[row[i] for i in kept] for row in body], dropped


def _words(header: str) -> list[str]:
    """A header's pieces a line may end after: words, and a name's parts after "_"."""
    return re.findall(r"[^ _]+_?|_", header) or [header]


def _wrap(header: str, width: int) -> str:
    """The header on lines of at most `width` characters (greedy, at its words)."""
    lines: list[str] = []
    for word in _words(header):
        joined = lines[-1] + ("" if lines[-1].endswith("_") else " ") + word if lines else word
        if lines and len(joined) <= width:
            lines[-1] = joined
        else:
            lines.append(word)
    return "\n".join(lines)


def select_columns(sheet: Sheet, wanted: Sequence[str]) -> Sheet:
    """The sheet with only the columns named in `wanted`, in that order: a column's key
    (best_val_acc), its title (best val acc) or a parameter's name (lr for params.lr)."""
    index: dict[str, int] = {}
    for i, column in enumerate(sheet.columns):
        head, _, param = column.key.partition(".")
        for name in (column.key, column.title, param if head == "params" else ""):
            if name:
                index.setdefault(name, i)
    unknown = [w for w in wanted if w not in index]
    if unknown:
        raise ConfigError(f"unknown column(s) {', '.join(unknown)} (choose from: "
                          f"{', '.join(c.key for c in sheet.columns)})")
    picked = [index[w] for w in wanted]
    rows = ([row[i] for i in picked] for row in sheet.rows)
    return Sheet(sheet.title, [sheet.columns[i] for i in picked], rows, sheet.notes,
                 sheet.vertical)


def formatted(sheet: Sheet) -> tuple[list[str], Iterable[list[str]]]:
    """Headers and formatted cells (streamed), transposed for vertical sheets."""
    cells = ([c.fmt(v) for c, v in zip(sheet.columns, row, strict=True)] for row in sheet.rows)
    if not sheet.vertical:
        return [c.title for c in sheet.columns], cells
    rows = list(cells)
    headers = ["", *(r[0] for r in rows)]
    body = [[c.title, *(r[i] for r in rows)] for i, c in enumerate(sheet.columns) if i > 0]
    return headers, body


def _md_cell(text: str) -> str:
    # Markdown viewers render inline HTML; escape it, and the pipes that split cells.
    return html.escape(text, quote=False).replace("|", "\\|").replace("\n", "<br>")


def write_markdown(sheet: Sheet, out: TextIO) -> None:
    headers, body = formatted(sheet)
    if sheet.title:
        out.write(f"### {_md_cell(sheet.title)}\n\n")
    out.write("| " + " | ".join(_md_cell(h) for h in headers) + " |\n")
    out.write("|" + "|".join("---" for _ in headers) + "|\n")
    for row in body:
        out.write("| " + " | ".join(_md_cell(c) for c in row) + " |\n")
    for note in sheet.notes:
        out.write(f"\n{_md_cell(note)}\n")


def _raw_text(value: Any) -> str:
    """A value as CSV and TSV hold it: blank for None, ISO times, JSON for dicts and lists,
    str() otherwise (a float's str() is its repr(), which round-trips exactly)."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    return json.dumps(value) if isinstance(value, dict | list) else str(value)


def write_csv(sheet: Sheet, out: TextIO) -> None:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([c.key for c in sheet.columns])
    writer.writerows([_raw_text(v) for v in row] for row in sheet.rows)


def write_tsv(sheet: Sheet, out: TextIO) -> None:
    """Tab-separated, one line per row, for `cut`/`awk`/`sort`: tabs and line breaks inside a
    value become spaces."""
    out.write("\t".join(c.key for c in sheet.columns) + "\n")
    for row in sheet.rows:
        out.write("\t".join(" ".join(_raw_text(v).replace("\t", " ").splitlines())
                            for v in row) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def json_text(obj: Any, indent: int | None = 2) -> str:
    """Strict JSON (NaN and infinities become null, so every parser reads it)."""
    return json.dumps(_finite(obj), default=_json_default, indent=indent, allow_nan=False,
                      ensure_ascii=False)


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def write_json(sheet: Sheet, out: TextIO) -> None:
    """A JSON array of records, streamed one record per line (exports can be large)."""
    first = True
    out.write("[")
    for record in sheet.records():
        out.write("\n" if first else ",\n")
        out.write(json_text(record, indent=None))
        first = False
    out.write("\n]\n")
