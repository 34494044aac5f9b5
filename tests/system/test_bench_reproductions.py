"""bench/reproductions.py, smoke-run on synthetic data: it runs a reproduction through the real
CLI (run, then evaluate), replaces only the table between its markers, labels a smoke run as not
a reproduction, and skips a finished study on the next invocation."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _script():  # the module object
    spec = importlib.util.spec_from_file_location("bench_reproductions",
                                                  ROOT / "bench" / "reproductions.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[spec.name] = module  # type: ignore[union-attr] # its dataclasses look it up
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.mark.slow
def test_smoke_run_fills_the_table_and_resumes(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    bench = _script()
    doc = tmp_path / "B.md"
    doc.write_text(f"# Benchmarks\n\nbefore\n\n{bench.BEGIN}\nold table\n{bench.END}\n\nafter\n")
    args = ["mlp-baseline-sgd-10ep", "--dataset", "synthetic", "--epochs", "1", "--threads", "1",
            "--out", str(tmp_path / "out"), "--doc", str(doc)]
    bench.main(args)
    text = doc.read_text()
    assert text.startswith("# Benchmarks\n\nbefore\n\n") and text.endswith("\n\nafter\n")
    assert "old table" not in text
    assert "SMOKE RUN (epochs 1, dataset synthetic)" in text and "NOT a reproduction" in text
    row = next(line for line in text.splitlines() if line.startswith("| mlp-baseline-sgd-10ep"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "MLP baseline: one hidden ReLU layer, plain SGD, 10 epochs."
    assert cells[2].endswith("% (1)") and cells[3].startswith("**") and cells[3].endswith("(1)")
    assert (tmp_path / "out" / "mlp-baseline-sgd-10ep.json").exists()
    capsys.readouterr()

    bench.main(args)  # finished: skipped, the same table written again
    assert "finished earlier" in capsys.readouterr().out
    assert doc.read_text() == text


def test_unknown_reproduction_is_refused() -> None:
    with pytest.raises(SystemExit, match="unknown reproduction"):
        _script().select_reproductions(["no-such-study"], None)


def test_selection_is_shortest_first_within_max_epochs() -> None:
    chosen = _script().select_reproductions([], 20)
    assert [r.epochs for r in chosen] == sorted(r.epochs for r in chosen)
    assert [r.stem for r in chosen] == ["mlp-baseline-sgd-10ep", "mixer-2blocks-radam-20ep",
                                        "mixer-adam-lr0.001-20ep"]
