"""Plotly figures of recorded studies (plotly.graph_objects), plus parameter importances.

Every string that comes from the database (study names, parameter names and values, states)
passes through `esc` (html.escape): Plotly renders a subset of HTML in titles, legends and
hover labels, and the escaped text displays as the original characters.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from datetime import datetime
from itertools import count
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from hpsearch.db.queries import counts_for_best
from hpsearch.db.records import Band, Curve, ParetoFront, TrialPoint
from hpsearch.objectives import DEFAULT, ObjectiveSpec

STATE_STYLE: dict[str, dict[str, Any]] = {
    "complete": {"dash": "solid", "width": 1.6},
    "pruned": {"dash": "dash", "width": 1.0, "color": "rgba(120,120,120,0.75)"},
    "failed": {"dash": "dot", "width": 1.0, "color": "rgba(200,60,60,0.75)"},
    "running": {"dash": "solid", "width": 1.0, "color": "rgba(90,140,220,0.6)"},
}
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf")
BAND_FILL = "rgba(100,100,100,0.18)"
LAYOUT: dict[str, Any] = {"template": "plotly_white", "height": 440,
                          "margin": {"l": 60, "r": 20, "t": 60, "b": 50},
                          "legend": {"groupclick": "toggleitem"}}


def esc(value: Any) -> str:
    return html.escape(str(value))


INTEGER_AXES = ("epoch", "trial number")  # x axes that count: no tick at 1.5


def _layout(fig: go.Figure, title: str, **extra: Any) -> go.Figure:
    fig.update_layout(**{**LAYOUT, "title": {"text": title}, **extra})
    _integer_ticks(fig)
    return fig


def _integer_ticks(fig: go.Figure) -> None:
    """Whole-number ticks on counting axes: Plotly's automatic ticks put 1.5 between epochs 1
    and 2. The step is the smallest of 1, 2, 5, 10, 20, 50, ... giving at most 10 ticks."""
    for key in [k for k in fig.layout if k.startswith("xaxis")]:
        axis = fig.layout[key]
        if axis.title.text not in INTEGER_AXES:
            continue
        name = "x" + key.removeprefix("xaxis")
        values = [v for trace in fig.data if (trace.xaxis or "x") == name
                  for v in (trace.x if trace.x is not None else ()) if isinstance(v, int | float)]
        if not values:
            continue
        axis.update(tick0=0, dtick=_whole_step(max(values) - min(values)), tickformat="d")


def _whole_step(span: float) -> int:
    """1, 2, 5, 10, 20, 50, ...: the first that cuts `span` into at most 10 steps."""
    return next(step for e in count() for step in (10**e, 2 * 10**e, 5 * 10**e)
                if span <= 10 * step)


def _line(state: str, color: str) -> dict[str, Any]:
    style = STATE_STYLE.get(state, STATE_STYLE["running"])
    return {"dash": style["dash"], "width": style["width"], "color": style.get("color", color)}


def _curve_traces(curves: Sequence[Curve], metric: str, *, legend: bool,
                  xaxis: str = "x", yaxis: str = "y") -> list[go.Scatter]:
    """One line per trial; pruned dashed grey, failed dotted red, one legend entry per state."""
    traces, seen = [], set()
    for rank, curve in enumerate(curves):
        state = esc(curve.state)
        traces.append(go.Scatter(
            x=curve.epochs, y=curve.values[metric], mode="lines+markers",
            marker={"size": 3}, line=_line(curve.state, PALETTE[rank % len(PALETTE)]),
            name=f"trial {curve.trial_number} ({state})", legendgroup=state,
            legendgrouptitle={"text": state} if state not in seen else None,
            showlegend=legend, xaxis=xaxis, yaxis=yaxis,
            hovertemplate=f"trial {curve.trial_number} ({state})<br>epoch %{{x}}: %{{y:.4f}}"
                          "<extra></extra>",
        ))
        seen.add(state)
    return traces


def _band_traces(band: Band, *, legend: bool, xaxis: str = "x",
                 yaxis: str = "y") -> list[go.Scatter]:
    """10th-90th percentile area and median line of the trials not drawn one by one."""
    low, mid, high = (band.percentiles[p] for p in (10, 50, 90))
    label = f"other trials (up to {max(band.n):,}): 10-90th percentile"
    common = {"x": band.epochs, "xaxis": xaxis, "yaxis": yaxis, "legendgroup": "band"}
    return [
        go.Scatter(y=high, mode="lines", line={"width": 0}, showlegend=False,
                   hoverinfo="skip", **common),
        go.Scatter(y=low, mode="lines", line={"width": 0}, fill="tonexty", fillcolor=BAND_FILL,
                   name=label, showlegend=legend, hoverinfo="skip", **common),
        go.Scatter(y=mid, mode="lines", line={"color": "rgba(80,80,80,0.9)", "dash": "dot"},
                   name="other trials: median", showlegend=legend,
                   customdata=band.n, **common,
                   hovertemplate="median of %{customdata} trials<br>epoch %{x}: %{y:.4f}"
                                 "<extra></extra>"),
    ]


def accuracy_curves(study: str, curves: Sequence[Curve], band: Band | None) -> go.Figure:
    fig = go.Figure()
    if band is not None:
        fig.add_traces(_band_traces(band, legend=True))
    fig.add_traces(_curve_traces(curves, "val_acc", legend=True))
    return _layout(fig, f"{esc(study)}: validation accuracy per epoch",
                   xaxis_title="epoch", yaxis_title="validation accuracy")


def loss_curves(study: str, curves: Sequence[Curve], bands: dict[str, Band | None]) -> go.Figure:
    fig = make_subplots(rows=1, cols=2, subplot_titles=("train loss", "validation loss"),
                        shared_yaxes=True, horizontal_spacing=0.04)
    for col, metric in ((1, "train_loss"), (2, "val_loss")):
        axis = "" if col == 1 else str(col)
        band = bands.get(metric)
        if band is not None:
            fig.add_traces(_band_traces(band, legend=col == 1, xaxis=f"x{axis}",
                                        yaxis=f"y{axis}"))
        fig.add_traces(_curve_traces(curves, metric, legend=col == 1, xaxis=f"x{axis}",
                                     yaxis=f"y{axis}"))
        fig.update_xaxes(title_text="epoch", row=1, col=col)
    fig.update_yaxes(title_text="loss", row=1, col=1)
    return _layout(fig, f"{esc(study)}: train and validation loss per epoch")


def _best_so_far(points: Sequence[TrialPoint], first: ObjectiveSpec) -> list[float | None]:
    """The best value so far in the first objective's direction (`best_query`'s rule)."""
    best: float | None = None
    out = []
    for p in points:
        if counts_for_best(p.state, p.value) and (best is None or first.better(p.value, best)):
            best = p.value
        out.append(best)
    return out


def best_by_trial(study: str, points: Sequence[TrialPoint],
                  first: ObjectiveSpec = DEFAULT[0]) -> go.Figure:
    """Each trial's value (by state) and the best complete value so far, by trial number."""
    fig = go.Figure()
    for state in ("complete", "pruned", "failed", "running"):
        shown = [p for p in points if p.state == state and p.value is not None]
        if shown:
            color = STATE_STYLE[state].get("color", PALETTE[0])
            fig.add_trace(go.Scatter(
                x=[p.number for p in shown], y=[p.value for p in shown], mode="markers",
                marker={"size": 5, "color": color}, name=state,
                hovertemplate=f"trial %{{x}} ({state}): %{{y:.4f}}<extra></extra>"))
    fig.add_trace(go.Scatter(x=[p.number for p in points], y=_best_so_far(points, first),
                             mode="lines", line={"shape": "hv", "color": "black"},
                             name="best so far"))
    return _layout(fig, f"{esc(study)}: best value so far by trial",
                   xaxis_title="trial number", yaxis_title=first.title)


def _finish_order(points: Sequence[TrialPoint]) -> list[TrialPoint]:
    return sorted((p for p in points if p.finished_at is not None),
                  key=lambda p: p.finished_at or datetime.min)


def best_by_time(study: str, points: Sequence[TrialPoint],
                 first: ObjectiveSpec = DEFAULT[0]) -> go.Figure:
    done = _finish_order(points)
    fig = go.Figure(go.Scatter(
        x=[p.finished_at for p in done], y=_best_so_far(done, first), mode="lines",
        line={"shape": "hv", "color": "black"}, name="best so far",
        customdata=[p.number for p in done],
        hovertemplate="%{x}<br>best %{y:.4f} (after trial %{customdata})<extra></extra>"))
    return _layout(fig, f"{esc(study)}: best value so far by wall-clock time (UTC)",
                   xaxis_title="trial finished at", yaxis_title=first.title)


def _hours_since_start(points: Sequence[TrialPoint]) -> list[float]:
    starts = [p.started_at for p in points if p.started_at is not None]
    if not starts:
        return []
    first = min(starts)
    return [((p.finished_at or first) - first).total_seconds() / 3600
            for p in _finish_order(points)]


def overlay_best(studies: Sequence[tuple[str, Sequence[TrialPoint], ObjectiveSpec]]
                 ) -> go.Figure:
    """Several studies' best-so-far curves, by trial number and by hours since their start."""
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.04,
                        subplot_titles=("by trial number", "by hours since the first trial"))
    for i, (name, points, first) in enumerate(studies):
        color = PALETTE[i % len(PALETTE)]
        label = esc(f"{name} ({first.title})")
        fig.add_trace(go.Scatter(x=[p.number for p in points], y=_best_so_far(points, first),
                                 mode="lines", line={"shape": "hv", "color": color},
                                 name=label, legendgroup=label), row=1, col=1)
        fig.add_trace(go.Scatter(x=_hours_since_start(points),
                                 y=_best_so_far(_finish_order(points), first), mode="lines",
                                 line={"shape": "hv", "color": color}, name=label,
                                 legendgroup=label, showlegend=False), row=1, col=2)
    fig.update_xaxes(title_text="trial number", row=1, col=1)
    fig.update_xaxes(title_text="hours", row=1, col=2)
    titles = sorted({first.title for _, _, first in studies})
    fig.update_yaxes(title_text=" / ".join(titles), row=1, col=1)
    return _layout(fig, "best value so far, studies overlaid")


def overlay_best_curves(studies: Sequence[tuple[str, Curve]]) -> go.Figure:
    """Each study's best trial: validation accuracy per epoch."""
    fig = go.Figure()
    for i, (name, curve) in enumerate(studies):
        label = esc(name)
        fig.add_trace(go.Scatter(
            x=curve.epochs, y=curve.values["val_acc"], mode="lines+markers",
            line={"color": PALETTE[i % len(PALETTE)]},
            name=f"{label}: trial {curve.trial_number}",
            hovertemplate=f"{label}<br>epoch %{{x}}: %{{y:.4f}}<extra></extra>"))
    return _layout(fig, "best trial of each study: validation accuracy per epoch",
                   xaxis_title="epoch", yaxis_title="validation accuracy")


def _axis(name: str, values: list[Any], dist: dict[str, Any] | None) -> dict[str, Any] | None:
    """A parcoords dimension from the stored distribution (Optuna's JSON form): a range spans
    the distribution's low..high (log10 for a log range), categories keep the space's order.
    Only a parameter the stored space lacks (the space changed between runs) is drawn from
    its observed values."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    label = esc(name)
    kind = (dist or {}).get("name")
    attrs = (dist or {}).get("attributes", {})
    if kind in ("FloatDistribution", "IntDistribution"):
        low, high = attrs["low"], attrs["high"]
        if attrs.get("log"):
            return {"label": f"{label} (log10)", "range": [math.log10(low), math.log10(high)],
                    "values": [math.log10(v) if v is not None and v > 0 else None
                               for v in values]}
        return {"label": label, "range": [low, high], "values": values}
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in present)
    if kind is None and numeric:
        return {"label": label, "values": values}
    order = [str(c) for c in attrs.get("choices", [])]  # the study's own order of choices
    seen = sorted({str(v) for v in present} - set(order), key=lambda s: (len(s), s))
    choices = order + seen
    index = {c: i for i, c in enumerate(choices)}
    return {"label": label, "values": [None if v is None else index[str(v)] for v in values],
            "range": [0, max(len(choices) - 1, 1)],
            "tickvals": list(range(len(choices))), "ticktext": [esc(c) for c in choices]}


def parallel_coordinates(study: str, rows: Sequence[tuple[int, float, dict[str, Any]]],
                         names: Sequence[str], space: dict[str, Any],
                         first: ObjectiveSpec = DEFAULT[0], what: str = "complete trials"
                         ) -> go.Figure:
    """Trials across the sampled parameters, coloured by the first objective's value (the
    better, the yellower); `space` is the study's stored distributions (name -> Optuna
    distribution JSON); `what` says which trials `rows` holds."""
    values = [value for _, value, _ in rows]
    # a line needs a value on every axis: a parameter that did not act in every trial shown
    # (a conditional one, momentum under SGD) is left to the slices, which show where it did
    names = [n for n in names if all(n in params for _, _, params in rows)]
    dims = [_axis(n, [params.get(n) for _, _, params in rows], space.get(n)) for n in names]
    dims = [d for d in dims if d is not None]
    dims.append({"label": esc(first.title), "values": values})
    fig = go.Figure(go.Parcoords(
        dimensions=dims, line={"color": values, "colorscale": "Viridis", "showscale": True,
                               "reversescale": not first.maximize,
                               "colorbar": {"title": {"text": esc(first.title)}}}))
    return _layout(fig, f"{esc(study)}: parameters of {len(rows):,} {what}",
                   margin={"l": 80, "r": 40, "t": 100, "b": 40})


SLICE_COLUMNS = 3


def slice_plots(study: str, rows: Sequence[tuple[int, float, dict[str, Any]]],
                names: Sequence[str], space: dict[str, Any],
                first: ObjectiveSpec = DEFAULT[0]) -> go.Figure:
    """The first objective against each sampled parameter, one panel per parameter (complete
    trials, later trials darker): where along each axis the good values lie. Categories keep
    the space's order; log ranges get a log axis."""
    cols = max(1, min(SLICE_COLUMNS, len(names)))
    count = max(1, math.ceil(len(names) / cols))
    fig = make_subplots(rows=count, cols=cols, shared_yaxes=True, horizontal_spacing=0.05,
                        vertical_spacing=0.5 / count, subplot_titles=[esc(n) for n in names])
    last = max((number for number, _, _ in rows), default=0)
    for i, name in enumerate(names):
        row, col = divmod(i, cols)
        shown = [(n, v, p[name]) for n, v, p in rows if p.get(name) is not None]
        dist = space.get(name) or {}
        attrs = dist.get("attributes", {})
        categorical = dist.get("name") == "CategoricalDistribution" or any(
            isinstance(x, str | bool) for _, _, x in shown)
        xs = [esc(x) if categorical else x for _, _, x in shown]
        fig.add_trace(go.Scatter(
            x=xs, y=[v for _, v, _ in shown], mode="markers", name=esc(name), showlegend=False,
            customdata=[n for n, _, _ in shown],
            marker={"size": 6, "color": [n for n, _, _ in shown], "colorscale": "Blues",
                    "cmin": -last / 3, "cmax": last or 1},
            hovertemplate=f"trial %{{customdata}}<br>{esc(name)} %{{x}}<br>"
                          f"{esc(first.title)} %{{y:.4f}}<extra></extra>"),
            row=row + 1, col=col + 1)
        axis: dict[str, Any] = {}
        if categorical:
            choices = [esc(c) for c in attrs.get("choices", [])]
            axis = {"type": "category", "categoryorder": "array",
                    "categoryarray": choices + [x for x in dict.fromkeys(xs)
                                                if x not in choices]}
        elif attrs.get("log"):
            axis = {"type": "log"}
        fig.update_xaxes(row=row + 1, col=col + 1, **axis)
    for r in range(count):
        fig.update_yaxes(title_text=esc(first.title), row=r + 1, col=1)
    return _layout(fig, f"{esc(study)}: {esc(first.title)} against each parameter "
                        f"({len(rows):,} complete trials)", height=max(440, 300 * count + 100))


def importance_figure(study: str, importances: dict[str, float], method: str) -> go.Figure:
    ordered = sorted(importances.items(), key=lambda kv: kv[1])
    fig = go.Figure(go.Bar(x=[v for _, v in ordered], y=[esc(k) for k, _ in ordered],
                           orientation="h", hovertemplate="%{y}: %{x:.3f}<extra></extra>"))
    return _layout(fig, f"{esc(study)}: parameter importances ({esc(method)})",
                   xaxis_title="importance (sums to 1)")


def pareto_figure(study: str, front: ParetoFront,
                  values: dict[int, tuple[float | None, ...]]) -> go.Figure:
    """The first objective against each other one: every complete trial (grey), the Pareto
    front (coloured, joined in the first objective's order) and the chosen trial (a star)."""
    first, *others = front.objectives
    fig = make_subplots(rows=1, cols=len(others), horizontal_spacing=0.08,
                        subplot_titles=[esc(f"{first.title} vs {o.title}") for o in others])
    numbers = [n for n, v in values.items() if all(x is not None for x in v)]
    on_front = [t.number for t in front.trials]
    for col, other in enumerate(others, start=1):
        j = front.objectives.index(other)
        groups = (("complete trials", [n for n in numbers if n not in front.values],
                   {"size": 6, "color": "rgba(120,120,120,0.55)"}, "markers"),
                  # joined only when it is the whole front: a projection of more is not one
                  ("Pareto front", on_front, {"size": 9, "color": PALETTE[1]},
                   "markers+lines" if len(others) == 1 else "markers"),
                  ("chosen trial", [front.chosen] if front.chosen in values else [],
                   {"size": 18, "color": PALETTE[3], "symbol": "star"}, "markers"))
        for name, shown, marker, mode in groups:
            if not shown:
                continue
            fig.add_trace(go.Scatter(
                x=[values[n][j] for n in shown], y=[values[n][0] for n in shown], mode=mode,
                marker=marker, line={"dash": "dot", "width": 1}, name=name, customdata=shown,
                legendgroup=name, showlegend=col == 1,
                hovertemplate=f"trial %{{customdata}}<br>{esc(other.title)} %{{x:.4g}}<br>"
                              f"{esc(first.title)} %{{y:.4f}}<extra>{name}</extra>"),
                row=1, col=col)
        fig.update_xaxes(title_text=esc(f"{other.title} ({other.direction})"), row=1, col=col,
                         type="log" if other.measure == "params" else None)
    fig.update_yaxes(title_text=esc(f"{first.title} ({first.direction})"), row=1, col=1)
    return _layout(fig, f"{esc(study)}: Pareto front ({len(on_front)} of {front.candidates} "
                        f"complete trials; chosen: trial {front.chosen})")
