"""`evaluate --epochs auto`: the retraining length chosen on a held-out slice of the training
set, by the curve (length-free schedules) or by one run per length (cosine)."""

from __future__ import annotations

import pytest

from hpsearch.db.models import Evaluation
from hpsearch.params import TrialParams
from hpsearch.trainer.data import DataOptions
from hpsearch.trainer.epochs_auto import AUTO_FACTOR, COSINE_FACTORS, PATIENCE, choose_epochs
from tests.db_rows import model_rows
from tests.helpers import hps

SMALL = TrialParams(patch_size=14, hidden_dim=16, token_mlp_dim=8, channel_mlp_dim=16,
                    batch_size=50, precision="fp32", lr=3e-3)
DATA = DataOptions(dataset="synthetic", synthetic_size=300, subset=100)


def test_the_curve_picks_its_best_epoch_and_stops_after_patience() -> None:
    seen: list[int] = []
    auto = choose_epochs(SMALL.replace(epochs=3, scheduler="none"), DATA, split_seed=1, seed=0,
                         device="cpu", on_epoch=lambda m: seen.append(m.epoch))
    assert list(auto.scores) == seen == list(range(1, len(seen) + 1))
    best = max(auto.scores, key=lambda e: (auto.scores[e], -e))
    assert auto.epochs == best
    # it ran to twice the trial's length, or stopped PATIENCE epochs after its best
    assert len(seen) == AUTO_FACTOR * 3 or len(seen) == best + PATIENCE
    assert len(seen) <= AUTO_FACTOR * 3


def test_cosine_tries_whole_runs_of_each_length() -> None:
    auto = choose_epochs(SMALL.replace(epochs=2, scheduler="cosine", warmup_epochs=0), DATA,
                         split_seed=1, seed=0, device="cpu")
    assert sorted(auto.scores) == sorted({max(1, round(2 * f)) for f in COSINE_FACTORS})
    assert auto.epochs == max(auto.scores, key=lambda e: (auto.scores[e], -e))


def test_evaluate_epochs_auto_on_the_cli(three_trials_url: str,
                                         capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, err = hps(capsys, monkeypatch, "evaluate", "tiny", "--epochs", "auto", "--db",
                         three_trials_url, "--device", "cpu", "--threads", "1")
    assert code == 0, err
    [row] = model_rows(three_trials_url, Evaluation)
    assert f"--epochs auto: {row.epochs} epoch(s) (held-out acc by length:" in out
    assert "held-out run: epoch" in err
    code, _, err = hps(capsys, monkeypatch, "evaluate", "tiny", "--epochs", "soon", "--db",
                       three_trials_url)
    assert code == 2 and "must be a number or 'auto'" in err
