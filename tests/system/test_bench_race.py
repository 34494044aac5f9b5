"""bench/race.py's bookkeeping (no training): the anytime curve is the best validation accuracy
seen by each time, averaged over seeds only where every seed has one, and the table replaces
only what lies between its size's markers."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _report() -> ModuleType:
    sys.path.insert(0, str(BENCH))  # the race's modules import each other by name
    try:
        spec = importlib.util.spec_from_file_location("race_report", BENCH / "race_report.py")
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        return module
    finally:
        sys.path.remove(str(BENCH))


def test_best_so_far_keeps_the_maximum_seen_by_each_time() -> None:
    curve = [[30.0, 0.5], [10.0, 0.7], [20.0, 0.6], [40.0, 0.8]]  # out of order on purpose
    assert _report().best_so_far(curve, [5.0, 10.0, 25.0, 35.0, 45.0]) == [
        None, 0.7, 0.7, 0.7, 0.8]


def test_mean_curve_starts_where_every_seed_has_a_value() -> None:
    records = [{"curve": [[10.0, 0.6], [30.0, 0.8]]}, {"curve": [[20.0, 0.7]]}]
    means = _report().mean_curve(records, [15.0, 25.0, 35.0])
    assert means[0] is None
    assert means[1:] == pytest.approx([0.65, 0.75])


def test_table_replaces_only_its_sizes_markers(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    report = _report()
    doc = tmp_path / "B.md"
    doc.write_text("intro\n<!-- race-quick:begin -->\nold\n<!-- race-quick:end -->\n"
                   "<!-- race-full:begin -->\nkeep\n<!-- race-full:end -->\n")
    monkeypatch.setattr(report, "BENCHMARKS", doc)
    report.write_docs("| new |", "quick")
    assert doc.read_text() == ("intro\n<!-- race-quick:begin -->\n| new |\n<!-- race-quick:end -->"
                               "\n<!-- race-full:begin -->\nkeep\n<!-- race-full:end -->\n")
