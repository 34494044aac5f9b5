"""The final model is the searched model: `evaluate`'s retraining on train + validation (more
steps per epoch, no validation split) runs at the learning rate the searched trial recorded at
every epoch, for every scheduler the trainer has, with rungs and with --epochs auto too."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from hpsearch.db import queries
from hpsearch.db.engine import make_engine
from hpsearch.db.models import Evaluation
from hpsearch.metrics import EpochMetrics
from hpsearch.params import SCHEDULERS
from hpsearch.search.evaluate import plan_evaluation, run_evaluation
from hpsearch.search.study import prepare_study
from hpsearch.search.study_file import load_study
from hpsearch.search.worker import run_worker

EPOCHS = 4
# options that move the learning rate within 4 epochs; plateau's threshold counts no epoch as
# better than the first, so with patience 0 it cuts after every epoch (a retraining that
# watched anything else would not cut the same way, or at all)
MOVING = {
    "none": "",
    "step": "step_size = 1\ngamma = 0.5",
    "cosine": "warmup_epochs = 1\nmin_lr = 1e-4",
    "plateau": "gamma = 0.5\nplateau_patience = 0\nplateau_threshold = 0.9",
}
# a multi-fidelity trial: half the training split for 2 epochs, then all of it (a single trial
# is promoted: successive halving has nothing to compare it with)
RUNGS = "rungs = [{fraction = 0.5, epochs = 2}, {fraction = 1.0, epochs = 4}]"


def one_trial_study(folder: Path, scheduler: str, budget: str, *, lr: float = 0.01,
                    options: str | None = None) -> tuple[str, str]:
    """A fixed configuration run once: half the images held out for validation, so the
    retraining has twice the steps per epoch. Returns (study name, database URL)."""
    name = f"replay-{scheduler}"
    path = folder / f"{name}.toml"
    path.write_text(f"""
[study]
name = "{name}"
sampler = "random"
pruner = "{'successive-halving' if 'rungs' in budget else 'none'}"
n_trials = 1

[data]
dataset = "synthetic"
synthetic_size = 200
val_fraction = 0.5

[budget]
{budget}

[workers]
checkpoint_dir = "{folder / 'checkpoints'}"

[space]
patch_size = 14
hidden_dim = 16
token_mlp_dim = 8
channel_mlp_dim = 16
lr = {lr}
batch_size = 20
precision = "fp32"
scheduler = "{scheduler}"
{MOVING[scheduler] if options is None else options}
""")
    url = f"sqlite:///{folder / 'h.db'}"
    config = load_study(path)
    prepare_study(config, url)
    run_worker(config.name, url, device="cpu")
    return name, url


def recorded(name: str, url: str) -> tuple[list[float], int]:
    """The searched trial's per-epoch learning rates and its best epoch."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            study = queries.find_study(conn, name)
            best = queries.best_trial(conn, study)
            assert best is not None and best.best_epoch is not None
            return queries.trial_lrs(conn, study, best.number), best.best_epoch
    finally:
        engine.dispose()


def retrained_lrs(url: str, epochs: int) -> list[float]:
    engine = make_engine(url)
    try:
        with Session(engine) as session:
            row = session.query(Evaluation).filter_by(epochs=epochs).one()
            return [point["lr"] for point in row.curve]
    finally:
        engine.dispose()


@pytest.mark.parametrize(("scheduler", "budget"),
                         [(s, f"max_epochs = {EPOCHS}") for s in SCHEDULERS]
                         + [("cosine", RUNGS), ("plateau", RUNGS)],
                         ids=[*SCHEDULERS, "cosine-rungs", "plateau-rungs"])
def test_the_retraining_replays_the_recorded_learning_rate(
        tmp_path: Path, scheduler: str, budget: str) -> None:
    name, url = one_trial_study(tmp_path, scheduler, budget)
    lrs, best_epoch = recorded(name, url)
    assert len(lrs) == EPOCHS
    if scheduler != "none":
        assert len(set(lrs)) > 1, lrs  # the schedule moved: the comparison means something

    # the whole run, then the default: up to the peak, on the same curve (cosine included:
    # its span stays the trial's, the retraining stops at the peak)
    run_evaluation(plan_evaluation(name, url, epochs=EPOCHS), url, device="cpu")
    assert retrained_lrs(url, EPOCHS) == pytest.approx(lrs, rel=1e-9)
    plan = plan_evaluation(name, url)
    assert plan.epochs == best_epoch
    if best_epoch != EPOCHS:
        run_evaluation(plan, url, device="cpu")
        assert retrained_lrs(url, best_epoch) == pytest.approx(lrs[:best_epoch], rel=1e-9)


def test_epochs_auto_replays_the_run_that_chose_the_length(tmp_path: Path) -> None:
    # a slower learner with gentle cuts: the held-out run peaks after its first cuts
    name, url = one_trial_study(tmp_path, "plateau", f"max_epochs = {EPOCHS}", lr=0.003,
                                options=MOVING["plateau"].replace("0.5", "0.9"))
    held_out: list[EpochMetrics] = []
    plan = plan_evaluation(name, url, epochs="auto", device="cpu", on_epoch=held_out.append)
    assert plan.auto is not None
    assert list(plan.auto.lrs) == [m.lr for m in held_out][:plan.epochs]
    assert min(plan.auto.lrs) < plan.auto.lrs[0]  # cut on the held-out slice's loss
    run_evaluation(plan, url, device="cpu")
    assert retrained_lrs(url, plan.epochs) == pytest.approx(list(plan.auto.lrs), rel=1e-9)
