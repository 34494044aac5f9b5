"""Figure details that a browser check does not see: counting axes get whole-number ticks."""

from __future__ import annotations

from hpsearch.db.records import Curve, TrialPoint
from hpsearch.report import figures


def curve(number: int, epochs: int) -> Curve:
    values = {m: [0.5 + 0.01 * e for e in range(epochs)]
              for m in ("val_acc", "train_loss", "val_loss")}
    return Curve(number, "complete", list(range(1, epochs + 1)), values)


def test_epoch_and_trial_axes_tick_at_whole_numbers() -> None:
    short = figures.accuracy_curves("s", [curve(0, 3)], None)
    assert (short.layout.xaxis.dtick, short.layout.xaxis.tickformat) == (1, "d")
    loss = figures.loss_curves("s", [curve(0, 60)], {})
    assert loss.layout.xaxis.dtick == loss.layout.xaxis2.dtick == 10  # both panels
    points = [TrialPoint(n, "complete", 0.5, None, None) for n in range(58)]
    assert figures.best_by_trial("s", points).layout.xaxis.dtick == 10
    # an axis that does not count is left to Plotly
    assert figures.best_by_time("s", points).layout.xaxis.dtick is None
