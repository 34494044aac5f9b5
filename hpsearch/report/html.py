"""The HTML report's page: one self-contained file that works offline, or one file per figure.
What goes into it, gathered from the database: sections.py.

plotly.js is inlined once (from the plotly package, never a CDN). Each figure's JSON sits in a
`<script type="application/json">` block with `<`, `>` and `&` written as \\u escapes, so no
user string can close the block; one small script draws them all. A Content-Security-Policy
allows only those two scripts (by hash) and no network at all, as a second line of defence;
pages with a WebGL figure also allow eval, which Plotly's WebGL code (regl) needs to compile its
shaders (without it, the figure shows "WebGL is not supported").
"""

from __future__ import annotations

import base64
import hashlib
import html
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpsearch.files import atomic_write, output_text
from hpsearch.report import sheets

if TYPE_CHECKING:
    import plotly.graph_objects as go

# Plotly trace types drawn with WebGL (regl): their pages need 'unsafe-eval'
WEBGL_TRACES = frozenset({"parcoords", "scattergl", "splom", "heatmapgl", "pointcloud",
                          "scatterpolargl", "parcats_gl"})
# The one inline script (allowed by its hash): draws the figures, and sorts a table.sortable
# when a header is clicked (numbers by their raw value in data-v, blanks last). The order goes
# into the address (#sort=TABLE:COLUMN:asc|desc), so a sorted view can be linked to.
DRAW = """\
document.querySelectorAll("script.hps-figure").forEach(function (data) {
  var spec = JSON.parse(data.textContent);
  Plotly.newPlot(data.dataset.target, spec.data, spec.layout,
                 {responsive: true, displaylogo: false});
});
function hpsSort(table, col, desc) {
  var body = table.tBodies[0];
  var rows = Array.prototype.slice.call(body.rows);
  rows.sort(function (a, b) {
    var x = a.cells[col], y = b.cells[col];
    var p = x.getAttribute("data-v"), q = y.getAttribute("data-v");
    var blankX = x.textContent === "-", blankY = y.textContent === "-";
    if (blankX !== blankY) return blankX ? 1 : -1;
    var r = (p !== null && q !== null) ? parseFloat(p) - parseFloat(q)
                                       : x.textContent.localeCompare(y.textContent);
    return desc ? -r : r;
  });
  rows.forEach(function (row) { body.appendChild(row); });
  Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, i) {
    th.setAttribute("aria-sort", i === col ? (desc ? "descending" : "ascending") : "none");
  });
}
document.querySelectorAll("table.sortable").forEach(function (table) {
  Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, i) {
    th.addEventListener("click", function () {
      var desc = th.getAttribute("aria-sort") === "ascending";
      hpsSort(table, i, desc);
      history.replaceState(null, "", "#sort=" + table.id + ":" + i + ":" +
                           (desc ? "desc" : "asc"));
    });
  });
});
var hpsWanted = /^#sort=([A-Za-z0-9-]+):([0-9]+):(asc|desc)$/.exec(location.hash);
if (hpsWanted && document.getElementById(hpsWanted[1])) {
  hpsSort(document.getElementById(hpsWanted[1]), +hpsWanted[2], hpsWanted[3] === "desc");
}"""
STYLE = """\
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 1200px; padding: 1em;
       color: #222; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ddd; padding: 2px 6px; text-align: right; }
th { background: #f4f4f4; } td:first-child, th:first-child { text-align: left; }
table.sortable th { cursor: pointer; } th[aria-sort=ascending]::after { content: " ▲"; }
th[aria-sort=descending]::after { content: " ▼"; }
caption { text-align: left; font-weight: bold; padding: 0.3em 0; }
.figure { min-height: 440px; margin-bottom: 1em; }
.note { color: #555; font-style: italic; }
.scroll { overflow-x: auto; }"""


@dataclass
class Figure:
    key: str  # the div id, and the file name stem with --split (ours, never user text)
    title: str  # plain text (escaped when written)
    fig: go.Figure


@dataclass
class Section:
    title: str  # plain text
    items: list[str | Figure] = field(default_factory=list)  # ready (escaped) HTML or figures

    @property
    def figures(self) -> list[Figure]:
        return [item for item in self.items if isinstance(item, Figure)]


@dataclass
class ReportDoc:
    names: list[str]
    database: str  # masked URL
    generated: datetime
    sections: list[Section]


# --- HTML ----------------------------------------------------------------------------------

def note_html(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def sheet_html(sheet: sheets.Sheet, table_id: str | None = None) -> str:
    """The sheet as an HTML table captioned by its title; with `table_id` (ours, never user
    text) it is sortable by clicking a header, numbers by their raw values."""
    if table_id is None:
        headers, body = sheets.formatted(sheet)
        rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                       for row in body)
        opening = "<table>"
    else:
        headers = [c.title for c in sheet.columns]
        rows = "".join("<tr>" + "".join(_sortable_cell(c, v) for c, v in zip(
            sheet.columns, row, strict=True)) + "</tr>" for row in sheet.rows)
        opening = f'<table id="{table_id}" class="sortable">'
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    caption = f"<caption>{html.escape(sheet.title)}</caption>" if sheet.title else ""
    notes = "".join(note_html(n) for n in sheet.notes)
    return (f'<div class="scroll">{opening}{caption}<thead><tr>{head}</tr></thead>'
            f"<tbody>{rows}</tbody></table></div>{notes}")


def _sortable_cell(column: sheets.Column, value: Any) -> str:
    """A cell; a number or time also carries its raw value (data-v) to sort by."""
    raw: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool) and value == value:
        raw = float(value)
    elif isinstance(value, datetime):
        raw = value.timestamp()
    elif isinstance(value, dict) and isinstance(value.get("mean"), float):  # a test accuracy
        raw = value["mean"]
    attr = f' data-v="{raw!r}"' if raw is not None and abs(raw) != float("inf") else ""
    return f"<td{attr}>{html.escape(column.fmt(value))}</td>"


def script_json(text: str) -> str:
    """JSON text that is safe inside <script>: no "</script", "<!--" or "]]>" can form."""
    return (text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def _figure_html(figure: Figure) -> str:
    data = script_json(figure.fig.to_json())
    return (f'<div id="{figure.key}" class="figure"></div>\n'
            f'<script type="application/json" class="hps-figure" data-target="{figure.key}">'
            f"{data}</script>")


def _sha256(script: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"


def uses_webgl(figures: list[Figure]) -> bool:
    return any(trace.type in WEBGL_TRACES for figure in figures for trace in figure.fig.data)


def _page(title: str, body: str, plotly_tag: str, script_sources: list[str],
          webgl: bool = False) -> str:
    """A whole page. The CSP permits the listed script sources and the drawing script only,
    and no connections: an injected script would not run, and nothing can be fetched.

    `webgl` adds 'unsafe-eval' (regl builds its shader code with `new Function`). It stays
    safe: eval is only reachable from the two hashed scripts, every user string arrives as
    escaped JSON data that nothing evaluates, and no network source is allowed.
    """
    sources = [*script_sources, _sha256(DRAW), *(["'unsafe-eval'"] if webgl else [])]
    csp = ("default-src 'none'; script-src " + " ".join(sources)
           + "; style-src 'unsafe-inline'; img-src data: blob:; font-src data:")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>
{STYLE}
</style>
</head>
<body>
{body}
{plotly_tag}
<script>{DRAW}</script>
</body>
</html>
"""


def _heading(doc: ReportDoc) -> tuple[str, str]:
    title = "hpsearch report: " + ", ".join(doc.names)
    when = doc.generated.strftime("%Y-%m-%d %H:%M UTC")
    return title, (f"<h1>{html.escape(title)}</h1>\n"
                   + note_html(f"generated {when} from {doc.database}"))


def _section_html(section: Section, figure_html: Any) -> str:
    parts = [f"<h2>{html.escape(section.title)}</h2>"]
    parts += [figure_html(item) if isinstance(item, Figure) else item for item in section.items]
    return "\n".join(parts)


def write_report(doc: ReportDoc, path: str | Path) -> str | Path:
    """One self-contained file: plotly.js inlined once, every figure, every table."""
    from plotly.offline import get_plotlyjs

    plotly_js = get_plotlyjs()
    title, heading = _heading(doc)
    body = "\n".join([heading, *(_section_html(s, _figure_html) for s in doc.sections)])
    figures = [f for s in doc.sections for f in s.figures]
    page = _page(title, body, f"<script>{plotly_js}</script>", [_sha256(plotly_js)],
                 webgl=uses_webgl(figures))
    with output_text(path) as out:  # "-": standard output
        out.write(page)
    return path


PLOTLY_FILE = "plotly.min.js"


def write_split(doc: ReportDoc, folder: Path) -> Path:
    """Each figure as its own page in `folder`, sharing one plotly.min.js; index.html holds
    the tables and links to the figures. Works offline from disk like the single file."""
    from plotly.offline import get_plotlyjs

    from hpsearch.errors import HpsearchError

    if str(folder) == "-":
        raise HpsearchError("--split writes a folder of files; -o - (standard output) takes "
                            "the single-file report")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise HpsearchError(f"refusing to write into {folder}: it is not a folder") from None
    except OSError as exc:
        raise HpsearchError(f"cannot create folder {folder}: {exc.strerror}") from None
    with atomic_write(folder / PLOTLY_FILE) as out:
        out.write(get_plotlyjs())
    tag = f'<script src="{PLOTLY_FILE}"></script>'
    sources = ["'self'", "file:"]  # the sibling plotly.min.js, opened from disk
    for section in doc.sections:
        for figure in section.figures:
            with atomic_write(folder / f"{figure.key}.html") as out:
                out.write(_page(figure.title, _figure_html(figure), tag, sources,
                                webgl=uses_webgl([figure])))

    def link(figure: Figure) -> str:
        return f'<p><a href="{figure.key}.html">{html.escape(figure.title)}</a></p>'

    title, heading = _heading(doc)
    body = "\n".join([heading, *(_section_html(s, link) for s in doc.sections)])
    with atomic_write(folder / "index.html") as out:
        out.write(_page(title, body, "", []))
    return folder / "index.html"
