"""The race's results: the anytime figure (HTML, hpsearch's report style), the raw curves (JSON)
and the table in docs/BENCHMARKS.md, rewritten from the arm×seed result files each time one is
added (bench/race.py runs this in a process of its own after every arm×seed)."""

from __future__ import annotations

import html
import json
import statistics
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from hpsearch.report.figures import LAYOUT, PALETTE
from hpsearch.report.html import Figure, ReportDoc, Section, write_report

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = REPO / "docs" / "BENCHMARKS.md"
LABELS = {"hand": "(a) hand-tuned, 1 run", "optuna": "(b) Optuna TPE + median",
          "asha": "(c) random + ASHA", "hpsearch": "(d) hpsearch, timeout + evaluate",
          "hpsearch-hours": "(d) hpsearch run --hours",
          "hpsearch-ensemble": "(d) hpsearch run --hours, ensemble of 2",
          "hpsearch-epochs": "(d) hpsearch run --hours, epochs as the only fidelity",
          "hpsearch-epochs-ensemble": "(d) hpsearch run --hours, epochs as the only fidelity, "
                                      "ensemble of 2"}
GRID_POINTS = 200


def load_results(folder: Path) -> dict[str, list[dict[str, Any]]]:
    """The finished arm×seed records, by arm (in the race's arm order)."""
    by_arm: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(folder.glob("*-seed-*.json")):
        record = json.loads(path.read_text())
        by_arm.setdefault(record["arm"], []).append(record)
    return {arm: by_arm[arm] for arm in LABELS if arm in by_arm}


def best_so_far(curve: list[list[float]], grid: list[float]) -> list[float | None]:
    """The best validation accuracy seen by each time of the grid (None before the first)."""
    points = sorted(curve)
    out: list[float | None] = []
    best: float | None = None
    i = 0
    for t in grid:
        while i < len(points) and points[i][0] <= t:
            best = points[i][1] if best is None else max(best, points[i][1])
            i += 1
        out.append(best)
    return out


def mean_curve(records: list[dict[str, Any]], grid: list[float]) -> list[float | None]:
    """The mean over seeds of the best-so-far curves, where every seed has a value."""
    curves = [best_so_far(r["curve"], grid) for r in records]
    return [statistics.fmean(vals) if all(v is not None for v in vals) else None  # type: ignore[arg-type]
            for vals in zip(*curves, strict=True)]


def summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    tests = [r["test_acc"] for r in records]
    use = [r["used_s"] / r["budget_s"] for r in records]
    return {"seeds": len(records), "test_mean": statistics.fmean(tests),
            "test_std": statistics.stdev(tests) if len(tests) > 1 else 0.0, "tests": tests,
            "best_val_mean": statistics.fmean(max(v for _, v in r["curve"]) for r in records),
            "use_min": min(use), "use_max": max(use),
            "cpu_share": statistics.fmean(r["cpu_s"] / r["used_s"] for r in records)}


def anytime_figure(results: dict[str, list[dict[str, Any]]], budget_s: float,
                   size: str) -> go.Figure:
    grid = [budget_s * k / GRID_POINTS for k in range(GRID_POINTS + 1)]
    fig = go.Figure()
    for color, (arm, records) in zip(PALETTE, results.items(), strict=False):
        means = mean_curve(records, grid)
        fig.add_trace(go.Scatter(
            x=[t / 60 for t in grid], y=means, mode="lines", name=LABELS[arm],
            line={"color": color, "width": 2, "shape": "hv"},
            hovertemplate=f"{LABELS[arm]}<br>%{{x:.1f}} min: %{{y:.4f}}<extra></extra>"))
    fig.add_vline(x=budget_s / 120, line={"dash": "dot", "color": "#999", "width": 1},
                  annotation_text="half the budget", annotation_position="bottom right")
    fig.update_layout(**{**LAYOUT, "title": {"text": f"Best validation accuracy so far, mean "
                                             f"over seeds ({size} race)"},
                         "xaxis_title": "minutes since the arm started (of its budget)",
                         "yaxis_title": "best validation accuracy so far"})
    return fig


def table_rows(results: dict[str, list[dict[str, Any]]]) -> list[list[str]]:
    rows = []
    for arm, records in results.items():
        s = summary(records)
        seeds = ", ".join(f"{t:.4f}" for t in s["tests"])
        rows.append([LABELS[arm], str(s["seeds"]),
                     f"**{100 * s['test_mean']:.2f} ± {100 * s['test_std']:.2f}%** ({seeds})",
                     f"{100 * s['best_val_mean']:.2f}%",
                     f"{100 * s['use_min']:.0f}–{100 * s['use_max']:.0f}%",
                     f"{s['cpu_share']:.2f}"])
    return rows


HEAD = ["arm", "seeds", "test accuracy, mean ± std (per seed)", "best validation (mean)",
        "budget used", "CPU cores used (mean)"]


def markdown_table(results: dict[str, list[dict[str, Any]]]) -> str:
    lines = ["| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(results)]
    return "\n".join(lines)


def html_table(results: dict[str, list[dict[str, Any]]]) -> str:
    def row(cells: list[str], tag: str) -> str:
        return "<tr>" + "".join(f"<{tag}>{html.escape(c.replace('**', ''))}</{tag}>"
                                for c in cells) + "</tr>"

    body = "\n".join(row(cells, "td") for cells in table_rows(results))
    return f"<table><thead>{row(HEAD, 'th')}</thead><tbody>\n{body}\n</tbody></table>"


def write_docs(text: str, size: str) -> None:
    """The table between the size's markers in docs/BENCHMARKS.md (left alone without them)."""
    begin, end = f"<!-- race-{size}:begin -->", f"<!-- race-{size}:end -->"
    doc = BENCHMARKS.read_text()
    if begin not in doc or end not in doc:
        return
    head, rest = doc.split(begin, 1)
    BENCHMARKS.write_text(f"{head}{begin}\n{text}\n{end}{rest.split(end, 1)[1]}")


def write_all(folder: Path, size: str) -> None:
    results = load_results(folder)
    if not results:
        return
    budget_s = max(r["budget_s"] for records in results.values() for r in records)
    curves = {arm: [{"seed": r["seed"], "budget_s": r["budget_s"], "used_s": r["used_s"],
                     "test_acc": r["test_acc"], "curve": r["curve"]} for r in records]
              for arm, records in results.items()}
    (folder / "curves.json").write_text(json.dumps(curves, indent=1))
    table = markdown_table(results)
    doc = ReportDoc([f"race ({size})"], "bench/results/race", datetime.now(UTC), [
        Section("Anytime curves", [Figure("anytime", "anytime", anytime_figure(
            results, budget_s, size))]),
        Section("Final test accuracy (each arm's one chosen model, test set read once per "
                "seed)", [html_table(results)])])
    write_report(doc, folder / "race.html")
    write_docs(table, size)
    print(table)
