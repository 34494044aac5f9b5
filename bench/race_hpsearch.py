"""Arm (d) of the race: hpsearch's recommended setting, run through its CLI as a user would.

The study file is studies/fashion-mnist-mixer-fidelity.toml's (TPE, successive halving over
rungs of data fraction × epochs, reduction factor 3) with its top rung at the race's trial
length and the space of bench/race_arms.py (`space_params`). One worker with one thread.

Three settings: `hours=True`, `hpsearch run --hours` (the hours budget of issue 23 item 2), which
plans the search and the final retraining inside the arm's budget and scores the test set
itself; `hours=False`, what a user has without it: a search timeout of SEARCH_SHARE of the
budget, then `hpsearch evaluate`; and `hours=True, ensemble=2`: the hours budget with
`[budget] final = {ensemble = 2}`, the test accuracy being the ensemble's; and `hours=True,
rungs=False`: the hours budget with epochs as the only fidelity (successive halving over epochs
of the whole training split, as ASHA), so that a finalist's first epochs are on all the data,
alone or with `ensemble=2`.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from race_arms import ArmResult, Clock

from hpsearch.params import DataOptions

SEARCH_SHARE = 0.5  # without --hours: the search's share of the budget, the rest for evaluate
STUDY = """\
[study]
name = "{name}"
sampler = "tpe"
pruner = "successive-halving"
n_trials = 10000  # the budget ends the search
seed = {seed}

[pruner]
reduction_factor = 3

[data]
dataset = "fashion-mnist"
val_fraction = {val_fraction}

[budget]
{fidelity}
{final}
[space]
model = "mixer"
patch_size = 4
hidden_dim = {{ low = 64, high = 128, step = 32 }}
token_mlp_dim = {{ low = 64, high = 128, step = 64 }}
channel_mlp_dim = {{ low = 128, high = 384, step = 128 }}
num_blocks = {{ low = 1, high = 2 }}
dropout = 0.0
activation = ["gelu", "relu"]
init = ["default", "xavier_uniform", "kaiming_uniform"]
optimizer = ["adam", "adamw"]
lr = {{ low = 5e-4, high = 5e-3, log = true }}
weight_decay = {{ low = 1e-5, high = 5e-2, log = true }}
batch_size = [128, 256]
label_smoothing = {{ low = 0.0, high = 0.15 }}
scheduler = "cosine"
warmup_epochs = {{ low = 0, high = 2 }}
augment = true
random_erasing = {{ low = 0.0, high = 0.3 }}
precision = "auto"
compile = "off"
"""


def fidelity_lines(epochs: int, *, rungs: bool) -> str:
    """Rungs of data fraction x epochs (the fidelity study's), or epochs as the only fidelity:
    successive halving over epochs 1, 3, 9, 27... of the whole training split."""
    if not rungs:
        return f"max_epochs = {epochs}"
    return (f"rungs = [{{ fraction = 0.2, epochs = {max(1, round(epochs * 0.2))} }}, "
            f"{{ fraction = 0.5, epochs = {max(2, round(epochs * 0.4))} }},\n"
            f"         {{ fraction = 1.0, epochs = {epochs} }}]")


def final_lines(ensemble: int, seeds: int) -> str:
    """[budget] final: the one best trial by default; else the ensemble and/or the seeds."""
    if ensemble == 1 and seeds == 1:
        return ""
    asked = ", ".join(f"{key} = {value}" for key, value in
                      (("seeds", seeds), ("ensemble", ensemble)) if value > 1)
    return f"final = {{ {asked} }}\nhours = 1.0  # replaced by run --hours\n"


def hpsearch_arm(options: DataOptions, seed: int, clock: Clock, epochs: int,
                 folder: Path, *, hours: bool, ensemble: int = 1,
                 rungs: bool = True, final_seeds: int = 1) -> ArmResult:
    suffix = ("" if not hours else "-hours" if rungs and ensemble == 1 else
              "-ensemble" if rungs else "-epochs" + ("-ensemble" if ensemble > 1 else ""))
    work = folder / f"hpsearch{suffix}-seed-{seed}"
    work.mkdir(parents=True, exist_ok=True)
    name = f"race-{work.name}"
    study = work / "study.toml"
    study.write_text(STUDY.format(name=name, seed=seed, val_fraction=options.val_fraction,
                                  fidelity=fidelity_lines(epochs, rungs=rungs),
                                  final=final_lines(ensemble, final_seeds)))
    db = f"sqlite:///{work / 'race.db'}"
    # the data folder as a user gives it ($HPSEARCH_DATA), the checkpoints beside the database
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HPSEARCH_DATA": options.data_dir or ""}
    common = ["--db", db]
    run = [sys.executable, "-m", "hpsearch", "run", str(study), *common, "--workers", "1",
           "--threads", "1", "--log-dir", str(work / "logs")]
    if hours:
        run += ["--hours", f"{clock.left() / 3600:.6f}"]
    else:
        run += ["--timeout", f"{clock.left() * SEARCH_SHARE:.0f}"]
    subprocess.run(run, cwd=work, env=env, check=True)
    if not hours:
        subprocess.run([sys.executable, "-m", "hpsearch", "evaluate", name, *common,
                        "--threads", "1"], cwd=work, env=env, check=True)
    used = clock.elapsed()
    result = read_database(work / "race.db", clock, ensemble=ensemble > 1)
    result.used_s = used
    result.notes["hours_budget"] = hours
    return result


def read_database(path: Path, clock: Clock, *, ensemble: bool = False) -> ArmResult:
    """The curve (each epoch's validation accuracy at the time it ended: its trial's start plus
    the trial's epoch seconds so far; one worker, so trials do not overlap) and the test
    accuracy of the final model (the run's one retraining), or of the final ensemble."""
    start = datetime.now(UTC).timestamp() - clock.elapsed()
    result = ArmResult()
    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            "SELECT t.number, t.started_at, e.val_acc, e.seconds FROM hps_epoch e "
            "JOIN hps_trial t ON t.id = e.trial_id ORDER BY t.number, e.epoch").fetchall()
        done: dict[int, float] = {}
        for number, started_at, val_acc, seconds in rows:
            begun = datetime.fromisoformat(started_at).replace(tzinfo=UTC).timestamp()
            done[number] = done.get(number, 0.0) + seconds
            result.curve.append((begun - start + done[number], val_acc))
        result.curve.sort()
        finals = conn.execute(
            "SELECT t.number, v.test_acc, v.epochs, v.seconds, t.params FROM hps_evaluation v "
            "JOIN hps_trial t ON t.id = v.trial_id ORDER BY v.id").fetchall()
        states = [s for (s,) in conn.execute("SELECT state FROM hps_trial")]
        scored = conn.execute("SELECT test_acc, members FROM hps_ensemble ORDER BY id DESC"
                              ).fetchone() if ensemble else None
    # the best trial's retraining: the ensemble's first member, else the one retraining
    members = json.loads(scored[1]) if scored is not None else []
    best = members[0]["trial"] if members else finals[-1][0]
    retrained = [row for row in finals if row[0] == best]  # one row per final seed
    number, _, final_epochs, final_s, params = retrained[0]
    seed_accs = [row[1] for row in retrained]
    result.test_acc = sum(seed_accs) / len(seed_accs)
    result.chosen = {"trial": number, "params": params, "seed_test_accs": seed_accs}
    if scored is not None:
        result.chosen |= {"single_test_acc": result.test_acc, "ensemble": members}
        result.test_acc = scored[0]
    result.notes = {"trials": len(states), "complete": states.count("complete"),
                    "pruned": states.count("pruned"), "final_epochs": final_epochs,
                    "final_s": final_s}
    return result
