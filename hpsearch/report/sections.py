"""What the report shows, gathered from the database: a section per study (tables, learning
curves, best so far, Pareto front, parameter views) and, for several studies, one comparing
them. The page they go into, and its writing: html.py.

Studies of any size stay small: the best `curves` trials are drawn one by one and the rest as a
per-epoch percentile band computed in SQL.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from hpsearch.db import (
    budget_queries,
    evaluation_queries,
    figure_queries,
    queries,
    records,
    summary_queries,
)
from hpsearch.db.engine import mask_url
from hpsearch.report import figures, importance, tables
from hpsearch.report.html import Figure, ReportDoc, Section, note_html, sheet_html

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from hpsearch.objectives import ObjectiveSpec

CURVE_METRICS = ("val_acc", "train_loss", "val_loss")


def build_report(conn: Connection, names: list[str], *, curves: int) -> ReportDoc:
    """Query everything the report shows and turn it into figures and tables."""
    infos = [queries.find_study(conn, n) for n in dict.fromkeys(names)]  # fail before work
    stats = [summary_queries.study_stats(conn, info) for info in infos]
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
        section.items.append(note_html(f"Note: {info.note}"))
    if many:
        section.items.append(note_html(f"{stats.total:,} trials: the best {curves} are drawn "
                                       "as curves, the others as a 10-90th percentile band."))
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
        pruning = ("pruning is off" if info.config.pruner == "none" else
                   f"the {info.config.pruner} pruner follows {info.config.pruned.measure}")
        section.items.append(note_html(
            f"Objectives: {tables.objective_text(info.objectives)}. The chosen trial is the "
            f"front's best in the first objective (see `hpsearch best --help`); {pruning}."))
        section.items.append(
            Figure(f"{key}-pareto", f"{info.name}: Pareto front",
                   figures.pareto_figure(info.name, front, values)) if front.trials
            else note_html("the Pareto front needs at least one complete trial"))
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
        return [note_html("parallel coordinates, slices and importances need at least one "
                          "complete trial")]
    items: list[str | Figure] = [
        Figure(f"{key}-parameters", f"{info.name}: parameters",
               figures.parallel_coordinates(info.name, rows, names, info.space, first)),
        Figure(f"{key}-slices", f"{info.name}: {first.title} by parameter",
               figures.slice_plots(info.name, rows, names, info.space, first)),
    ]
    items.append(_importances(info, rows, f"{key}-importances", "importances"))
    with_pruned = figure_queries.complete_params(conn, info, with_pruned=True)
    if len(with_pruned) == len(rows):
        return [*items, note_html("no pruned trial has a value: the views above hold every "
                                  "trial")]
    what = "complete and pruned trials"
    items.append(note_html(f"The same views with the pruned trials included "
                           f"({len(with_pruned):,} trials): a pruned trial's value is its best "
                           "before it was stopped, at a smaller budget than a complete one's."))
    items.append(Figure(f"{key}-pruned-parameters", f"{info.name}: parameters, pruned included",
                        figures.parallel_coordinates(info.name, with_pruned, names, info.space,
                                                     first, what)))
    items.append(_importances(info, with_pruned, f"{key}-pruned-importances",
                              "importances, pruned included", what))
    return items


def _importances(info: records.StudyInfo, rows: list[tuple[int, float, dict]], key: str,
                 title: str, what: str = "complete trials") -> str | Figure:
    """The importance figure of `rows`, or a note saying why there is none."""
    found, how = importance.param_importances(info.space, rows, info.objectives[0], what)
    if not found:
        return note_html(how)
    return Figure(key, f"{info.name}: {title}", figures.importance_figure(info.name, found, how))


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
