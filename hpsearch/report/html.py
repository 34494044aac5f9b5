"""The HTML report: one self-contained file that works offline, or one file per figure.

plotly.js is inlined once (from the plotly package, never a CDN). Each figure's JSON sits in a
`<script type="application/json">` block with `<`, `>` and `&` written as \\u escapes, so no
user string can close the block; one small script draws them all. A Content-Security-Policy
allows only those two scripts (by hash) and no network at all, as a second line of defence;
pages with a WebGL figure also allow eval, which Plotly's WebGL code (regl) needs to compile its
shaders (without it, the figure shows "WebGL is not supported").

Studies of any size stay small: the best `curves` trials are drawn one by one and the rest as a
per-epoch percentile band computed in SQL.
"""

from __future__ import annotations

import base64
import hashlib
import html
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpsearch.db import budget_queries, evaluation_queries, figure_queries, queries, records
from hpsearch.db.engine import mask_url
from hpsearch.files import atomic_write, output_text
from hpsearch.report import figures, importance, sheets, tables

if TYPE_CHECKING:
    import plotly.graph_objects as go
    from sqlalchemy import Connection

    from hpsearch.objectives import ObjectiveSpec

# Plotly trace types drawn with WebGL (regl): their pages need 'unsafe-eval'
WEBGL_TRACES = frozenset({"parcoords", "scattergl", "splom", "heatmapgl", "pointcloud",
                          "scatterpolargl", "parcats_gl"})
CURVE_METRICS = ("val_acc", "train_loss", "val_loss")
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


# --- gathering -----------------------------------------------------------------------------

def build_report(conn: Connection, names: list[str], *, curves: int) -> ReportDoc:
    """Query everything the report shows and turn it into figures and tables."""
    infos = [queries.find_study(conn, n) for n in dict.fromkeys(names)]  # fail before work
    stats = [queries.study_stats(conn, info) for info in infos]
    sections, overlay_points, overlay_curves = [], [], []
    for index, study in enumerate(stats):
        section, points, best_curve = _study_section(conn, study, curves, f"s{index + 1}")
        sections.append(section)
        overlay_points.append((study.study.name, points, study.study.objectives[0]))
        if best_curve is not None:
            overlay_curves.append((study.study.name, best_curve))
    if len(infos) > 1:
        sections.insert(0, _comparison_section(stats, overlay_points, overlay_curves))
    masked = mask_url(conn.engine.url.render_as_string(hide_password=False))
    return ReportDoc([i.name for i in infos], masked, datetime.now(UTC), sections)


def _study_section(conn: Connection, stats: records.StudyStats, curves: int, key: str
                   ) -> tuple[Section, list[records.TrialPoint], records.Curve | None]:
    info = stats.study
    top = figure_queries.top_curves(conn, info, CURVE_METRICS, curves)
    many = stats.total > curves
    bands = {m: figure_queries.epoch_band(conn, info, m, skip_top=curves) if many else None
             for m in CURVE_METRICS}
    points = figure_queries.trial_points(conn, info)
    rows = figure_queries.complete_params(conn, info)
    names = tables.param_names(info.space, [p for _, _, p in rows])
    first = info.objectives[0]

    section = Section(f"Study {info.name}", [sheet_html(tables.compare_sheet([stats], names))])
    rungs = figure_queries.rung_stats(conn, info)
    if rungs:  # a multi-fidelity budget ([budget] rungs)
        section.items.append(sheet_html(tables.rungs_sheet("rungs (data fraction × epochs)",
                                                           rungs)))
    use = budget_queries.budget_use(conn, info)
    if use is not None:  # an hours budget ([budget] hours, run --hours)
        section.items.append(sheet_html(tables.budget_sheet("hours budget: planned and used",
                                                            use)))
    if info.note:
        section.items.append(_note(f"Note: {info.note}"))
    if many:
        section.items.append(_note(f"{stats.total:,} trials: the best {curves} are drawn as "
                                   "curves, the others as a 10-90th percentile band."))
    section.items += [
        Figure(f"{key}-accuracy", f"{info.name}: validation accuracy",
               figures.accuracy_curves(info.name, top, bands["val_acc"])),
        Figure(f"{key}-loss", f"{info.name}: losses", figures.loss_curves(info.name, top, bands)),
        Figure(f"{key}-best-by-trial", f"{info.name}: best so far by trial",
               figures.best_by_trial(info.name, points, first)),
        Figure(f"{key}-best-by-time", f"{info.name}: best so far by time",
               figures.best_by_time(info.name, points, first)),
    ]
    values = queries.objective_values(conn, info) if len(info.objectives) > 1 else None
    if values is not None:
        front = queries.pareto(conn, info)
        section.items.append(_note(
            f"Objectives: {tables.objective_text(info.objectives)}. The chosen trial is the "
            "front's best in the first objective (see `hpsearch best --help`); pruning is off "
            "for multi-objective studies."))
        section.items.append(
            Figure(f"{key}-pareto", f"{info.name}: Pareto front",
                   figures.pareto_figure(info.name, front, values)) if front.trials
            else _note("the Pareto front needs at least one complete trial"))
    section.items += _parameter_views(conn, info, key, rows, names)
    everything = queries.leaderboard(conn, info)
    section.items.append(sheet_html(tables.trials_sheet(
        info, everything, names, tests=evaluation_queries.study_evaluations(conn, info),
        best=stats.best.number if stats.best else None, values=values, reasons=True,
        tags=any(t.tags for t in everything),
        title=f"{info.name}: all {stats.total:,} trials, by {first.title}, best first "
              "(click a column header to sort)"), table_id=f"{key}-trials"))
    best_curve = next((c for c in top if stats.best and c.trial_number == stats.best.number),
                      None)
    return section, points, best_curve


def _parameter_views(conn: Connection, info: records.StudyInfo, key: str,
                     rows: list[tuple[int, float, dict]], names: list[str]) -> list[str | Figure]:
    """Parallel coordinates, slices and importances of the complete trials, then parallel
    coordinates and importances with the pruned trials too (a pruned trial's value is its
    best before it was stopped: a smaller budget, so it is shown apart)."""
    first = info.objectives[0]
    if not rows:
        return [_note("parallel coordinates, slices and importances need at least one "
                      "complete trial")]
    items: list[str | Figure] = [
        Figure(f"{key}-parameters", f"{info.name}: parameters",
               figures.parallel_coordinates(info.name, rows, names, info.space, first)),
        Figure(f"{key}-slices", f"{info.name}: {first.title} by parameter",
               figures.slice_plots(info.name, rows, names, info.space, first)),
    ]
    found, how = importance.param_importances(info.space, rows, first)
    items.append(Figure(f"{key}-importances", f"{info.name}: importances",
                        figures.importance_figure(info.name, found, how)) if found else _note(how))
    with_pruned = figure_queries.complete_params(conn, info, with_pruned=True)
    if len(with_pruned) == len(rows):
        return [*items, _note("no pruned trial has a value: the views above hold every trial")]
    what = "complete and pruned trials"
    items.append(_note(f"The same views with the pruned trials included ({len(with_pruned):,} "
                       "trials): a pruned trial's value is its best before it was stopped, "
                       "at a smaller budget than a complete one's."))
    items.append(Figure(f"{key}-pruned-parameters", f"{info.name}: parameters, pruned included",
                        figures.parallel_coordinates(info.name, with_pruned, names, info.space,
                                                     first, what)))
    found, how = importance.param_importances(info.space, with_pruned, first, what)
    items.append(Figure(f"{key}-pruned-importances",
                        f"{info.name}: importances, pruned included",
                        figures.importance_figure(info.name, found, how)) if found else _note(how))
    return items


def _comparison_section(stats: list[records.StudyStats],
                        points: list[tuple[str, list[records.TrialPoint], ObjectiveSpec]],
                        best_curves: list[tuple[str, records.Curve]]) -> Section:
    names: list[str] = []
    for s in stats:
        found = [s.best.sampled] if s.best else []
        names += [n for n in tables.param_names(s.study.space, found) if n not in names]
    section = Section("Studies compared", [sheet_html(tables.compare_sheet(stats, names)),
                                           Figure("compare-best", "best so far, overlaid",
                                                  figures.overlay_best(points))])
    if best_curves:
        section.items.append(Figure("compare-curves", "best trials, overlaid",
                                    figures.overlay_best_curves(best_curves)))
    return section


# --- HTML ----------------------------------------------------------------------------------

def _note(text: str) -> str:
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
    notes = "".join(_note(n) for n in sheet.notes)
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
                   + _note(f"generated {when} from {doc.database}"))


def _section_html(section: Section, figure_html: Any) -> str:
    parts = [f"<h2>{html.escape(section.title)}</h2>"]
    parts += [figure_html(item) if isinstance(item, Figure) else item for item in section.items]
    return "\n".join(parts)


def write_report(doc: ReportDoc, path: Path) -> Path:
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
