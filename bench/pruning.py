"""Pruning benchmark: the same random search with pruner none, median and hyperband, and with a
multi-fidelity budget (successive halving across rungs of data fraction × epochs).

One study definition (below), run four times, each in its own SQLite database under
bench/results/ (pruning-none.db, pruning-median.db, pruning-hyperband.db,
pruning-multi-fidelity.db). The configurations are
drawn once by Optuna's random sampler with the study seed and enqueued, in the same order, in all
three studies; each trial trains with seed study_seed + trial number. So trial k has the same
configuration and the same first epochs in all three and only the pruner differs (the script
checks that the configurations agree). Enqueueing rather than sampling in each worker also keeps
that true across reruns: a fresh worker's sampler starts again from its seed. Data: a
10,000-image Fashion-MNIST subset (9,000 train / 1,000 validation); 30 trials of up to 12 epochs.
The multi-fidelity study has [budget] rungs of 1/9, 1/3 and all of the training split, ending at
about 1/9, 1/3 and all of the epochs (27 epochs: 3, 9, 27), with successive halving (reduction
factor 3) promoting trials from rung to rung; the validation split is the same for all four.

The three studies advance in rounds (one trial each, in turn), so a change in the machine's load
falls on all three alike. A study lives in its database: interrupt the script and rerun it, and
every study continues where it stopped (finished trials are kept; a trial cut off midway is
marked failed, and that study goes on with the next configuration).

Reported per pruner, from the stored epochs:
  * total epochs trained and their compute in full-data epochs (an epoch on a fraction f of the
    training split counts f; the same as epochs without rungs), and total training time (sum of
    the trials' durations);
  * epochs and time until the first epoch whose validation accuracy is within 0.5 points of the
    best that `none` finds ("time to target"). Time counts the trials' own durations in trial
    order (the studies run one trial at a time), so pauses between reruns do not count;
  * the ratios none / pruner of each: the target is >= 3x less compute with pruning, >= 5x with
    the multi-fidelity budget.
Studies already finished in the results folder are not run again: to add the multi-fidelity
setting to an earlier run, copy its three databases into a new folder and pass it as --results.
Results: stdout and bench/results/pruning.json.

    .venv/bin/python bench/pruning.py            # ~20-40 min on 2 cores, by their load
    .venv/bin/python bench/pruning.py --quick    # smoke run: synthetic data, temp folder, ~1 min
    .venv/bin/python bench/pruning.py --results DIR --measure-only   # report what DIR holds
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import optuna
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hpsearch.db.engine import make_engine
from hpsearch.db.migrate import ensure_schema
from hpsearch.db.models import Epoch, Study, Trial
from hpsearch.files import atomic_write
from hpsearch.search.space import suggest
from hpsearch.search.study import open_storage, prepare_study
from hpsearch.search.study_file import StudyConfig, parse_study
from hpsearch.search.worker import run_worker

RESULTS = Path(__file__).resolve().parent / "results"
PRUNERS = ("none", "median", "hyperband", "multi-fidelity")
TARGET_GAP = 0.005  # "within 0.5 points" of none's best validation accuracy
# each setting should cost at least this many times less compute than none
GOALS = {"median": 3.0, "hyperband": 3.0, "multi-fidelity": 5.0}
RUNG_FRACTIONS = (1 / 9, 1 / 3, 1.0)
RUNG_FACTOR = 3  # successive halving's reduction factor between the rungs


def rungs(epochs: int) -> list[dict[str, float | int]]:
    """The multi-fidelity rungs for an epoch budget: fractions 1/9, 1/3, 1 of the training
    split, ending at about 1/9, 1/3 and all of the epochs (each rung at least one epoch)."""
    out: list[dict[str, float | int]] = []
    for fraction in RUNG_FRACTIONS:
        end = max(round(epochs * fraction), out[-1]["epochs"] + 1 if out else 1)
        out.append({"fraction": round(fraction, 4), "epochs": int(end)})
    return out


def study_doc(pruner: str, *, quick: bool, trials: int, epochs: int, subset: int) -> dict:
    """The benchmark study; identical for every pruner but its name and pruner."""
    data: dict[str, Any] = ({"dataset": "synthetic", "synthetic_size": 600, "val_fraction": 0.2}
                            if quick else
                            {"dataset": "fashion-mnist", "subset": subset, "val_fraction": 0.1})
    fidelity = pruner == "multi-fidelity"
    return {
        "study": {"name": f"pruning-{pruner}", "sampler": "random",
                  "pruner": "successive-halving" if fidelity else pruner,
                  "n_trials": trials, "seed": 0},
        "data": data,
        "budget": ({"rungs": rungs(epochs)} if fidelity
                   else {"max_epochs": epochs, "min_epochs": 1}),
        **({"pruner": {"reduction_factor": RUNG_FACTOR}} if fidelity else {}),
        "workers": {"checkpoint_dir": str(RESULTS / "pruning-checkpoints")},
        "space": {
            "patch_size": [4, 7],
            "hidden_dim": [64, 128],
            "token_mlp_dim": [32, 64],
            "channel_mlp_dim": [128, 256],
            "num_blocks": {"low": 1, "high": 2},
            "dropout": {"low": 0.0, "high": 0.2},
            "activation": ["gelu", "relu"],
            "init": ["default", "xavier_uniform"],
            "optimizer": ["sgd", "adam", "adamw", "radam"],
            "lr": {"low": 1e-4, "high": 3e-2, "log": True},
            "weight_decay": {"low": 1e-6, "high": 1e-2, "log": True},
            "batch_size": [128, 256],
            "scheduler": ["none", "cosine"],
        },
    }


@dataclass
class PrunerResult:
    pruner: str
    trials: int
    complete: int
    pruned: int
    failed: int
    epochs: int  # total epochs trained
    compute: float  # the same in full-data epochs (an epoch on fraction f counts f)
    seconds: float  # sum of the trials' durations
    best_val_acc: float | None
    best_trial: int | None
    epochs_to_target: int | None
    compute_to_target: float | None
    seconds_to_target: float | None
    target_trial: int | None


def _rows(url: str, name: str) -> tuple[list[Trial], dict[int, list[Epoch]]]:
    engine = make_engine(url)
    try:
        with Session(engine, expire_on_commit=False) as session:
            study_id = session.scalar(select(Study.id).where(Study.name == name))
            trials = list(session.scalars(select(Trial).where(Trial.study_id == study_id)
                                          .order_by(Trial.number)))
            epochs: dict[int, list[Epoch]] = {t.id: [] for t in trials}
            for epoch in session.scalars(select(Epoch).where(Epoch.trial_id.in_(list(epochs)))
                                         .order_by(Epoch.trial_id, Epoch.epoch)):
                epochs[epoch.trial_id].append(epoch)
            return trials, epochs
    finally:
        engine.dispose()


def measure(url: str, name: str, pruner: str, target: float | None) -> PrunerResult:
    trials, epochs = _rows(url, name)
    done = [t for t in trials if t.state != "running"]
    states = [t.state for t in done]
    best = max((t for t in done if t.state == "complete" and t.value is not None),
               key=lambda t: t.value, default=None)
    result = PrunerResult(
        pruner, len(done), states.count("complete"), states.count("pruned"),
        states.count("failed"), sum(len(epochs[t.id]) for t in done),
        sum(_cost(e) for t in done for e in epochs[t.id]),
        sum(t.seconds or 0.0 for t in done), best.value if best else None,
        best.number if best else None, None, None, None, None)
    if target is None:
        return result
    spent_epochs, spent_compute, spent_s = 0, 0.0, 0.0
    for trial in done:  # one worker: trial order is time order
        elapsed, compute = 0.0, 0.0
        for epoch in epochs[trial.id]:
            elapsed += epoch.seconds
            compute += _cost(epoch)
            if epoch.val_acc >= target:
                result.epochs_to_target = spent_epochs + epoch.epoch
                result.compute_to_target = spent_compute + compute
                result.seconds_to_target = spent_s + elapsed
                result.target_trial = trial.number
                return result
        spent_epochs += len(epochs[trial.id])
        spent_compute += compute
        spent_s += trial.seconds or elapsed
    return result


def _cost(epoch: Epoch) -> float:
    """One epoch's compute in full-data epochs: its training fraction (NULL: all of it)."""
    return epoch.fraction if epoch.fraction is not None else 1.0


def same_trials(results_dir: Path) -> tuple[bool, list[str]]:
    """Whether trial k sampled the same configuration in every study (where all have trial k),
    and the fixed (unsampled) params that differ anywhere: a study run with an older hpsearch
    stores the defaults of its time (round two changed momentum 0.9 -> 0, nesterov, patience)."""
    by_pruner = []
    for pruner in PRUNERS:
        trials, _ = _rows(db_url(results_dir, pruner), f"pruning-{pruner}")
        by_pruner.append({t.number: t for t in trials})
    common = set.intersection(*(set(p) for p in by_pruner))
    sampled = all({k: by_pruner[0][n].params[k] for k in by_pruner[0][n].sampled}
                  == {k: other[n].params.get(k) for k in by_pruner[0][n].sampled}
                  for other in by_pruner[1:] for n in common)
    fixed = sorted({f"{k}: {by_pruner[0][n].params.get(k)!r} vs {other[n].params.get(k)!r}"
                    for other in by_pruner[1:] for n in common
                    for k in set(by_pruner[0][n].params) | set(other[n].params)
                    if k not in by_pruner[0][n].sampled
                    and by_pruner[0][n].params.get(k) != other[n].params.get(k)})
    return sampled, fixed


def db_url(results_dir: Path, pruner: str) -> str:
    return f"sqlite:///{results_dir / f'pruning-{pruner}.db'}"


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def fmt(value: Any, spec: str = "") -> str:
    return "-" if value is None else format(value, spec)


def sample_configurations(config: StudyConfig, n: int) -> list[dict[str, Any]]:
    """The first `n` draws of the random sampler with the study seed (in memory)."""
    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=config.seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        applied, sampled = suggest(trial, config)
        out.append({name: applied[name] for name in sampled})
        study.tell(trial, 0.0)
    return out


def enqueue(config: StudyConfig, url: str, configurations: list[dict[str, Any]]) -> None:
    """Queue the configurations not queued yet (counted in a study attribute: resumable)."""
    storage = open_storage(url, config.workers)
    try:
        study = optuna.load_study(study_name=config.name, storage=storage)
        queued = int(study.user_attrs.get("bench_enqueued", 0))
        for i in range(queued, len(configurations)):
            study.enqueue_trial(configurations[i])
            study.set_user_attr("bench_enqueued", i + 1)
    finally:
        storage.remove_session()


def finished(url: str, name: str) -> int:
    """Trials that count towards n_trials (complete or pruned), as the worker counts them."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return conn.scalar(select(func.count()).select_from(Trial).join(Study).where(
                Study.name == name, Trial.state.in_(("complete", "pruned")))) or 0
    finally:
        engine.dispose()


def run(configs: dict[str, StudyConfig], results_dir: Path, trials: int, device: str) -> None:
    """Round-robin: each study gets its next trial in turn, until all have `trials`."""
    configurations = sample_configurations(configs["none"], trials)
    for pruner, config in configs.items():
        url = db_url(results_dir, pruner)
        ensure_schema(url)
        prepare_study(config, url, n_trials=min(trials, max(1, finished(url, config.name))))
        enqueue(config, url, configurations)
    for k in range(1, trials + 1):
        for pruner, config in configs.items():
            url = db_url(results_dir, pruner)
            if finished(url, config.name) >= k:
                continue  # done in an earlier run
            prepare_study(config, url, n_trials=k)  # the study's target grows one by one
            started = time.monotonic()
            summary = run_worker(config.name, url, device=device)
            if summary.complete + summary.pruned + summary.failed:
                print(f"[{datetime.now():%H:%M:%S}] round {k}/{trials} {pruner}: "
                      f"{summary.complete} complete, {summary.pruned} pruned, "
                      f"{summary.failed} failed ({time.monotonic() - started:.1f}s)",
                      flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: synthetic data, 6 trials of 3 epochs, in a temp folder")
    parser.add_argument("--trials", type=int, default=None, help="trials per study (30)")
    parser.add_argument("--epochs", type=int, default=None, help="max epochs per trial (12)")
    parser.add_argument("--subset", type=int, default=10_000,
                        help="Fashion-MNIST training images used (before the split)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--measure-only", action="store_true",
                        help="train nothing: measure what the databases in --results hold "
                        "(an interrupted run: its unfinished studies are reported as they are)")
    parser.add_argument("--results", type=Path, default=None,
                        help="folder for the databases and pruning.json (default bench/results, "
                        "or a temp folder with --quick)")
    args = parser.parse_args()
    trials = args.trials or (6 if args.quick else 30)
    epochs = args.epochs or (3 if args.quick else 12)
    results_dir = args.results or (Path(tempfile.mkdtemp(prefix="pruning-quick-")) if args.quick
                                   else RESULTS)
    results_dir.mkdir(parents=True, exist_ok=True)

    import torch

    from hpsearch.trainer.runtime import configure_threads

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.basicConfig(level=logging.WARNING)
    threads = configure_threads(args.threads)
    configs = {}
    for pruner in PRUNERS:
        doc = study_doc(pruner, quick=args.quick, trials=trials, epochs=epochs,
                        subset=args.subset)
        doc["workers"]["checkpoint_dir"] = str(results_dir / "pruning-checkpoints")
        configs[pruner] = parse_study(doc, f"pruning benchmark ({pruner})")
    print(f"pruning benchmark: {trials} trials x up to {epochs} epochs, "
          f"{configs['none'].data.dataset}, {threads} thread(s), results in {results_dir}",
          flush=True)
    started = time.monotonic()
    if not args.measure_only:
        run(configs, results_dir, trials, args.device)
    run_s = time.monotonic() - started

    baseline = measure(db_url(results_dir, "none"), "pruning-none", "none", None)
    target = (baseline.best_val_acc - TARGET_GAP) if baseline.best_val_acc is not None else None
    results = {p: measure(db_url(results_dir, p), f"pruning-{p}", p, target) for p in PRUNERS}
    none = results["none"]
    ratios = {p: {"epochs": ratio(none.epochs, r.epochs),
                  "compute": ratio(none.compute, r.compute),
                  "seconds": ratio(none.seconds, r.seconds),
                  "epochs_to_target": ratio(none.epochs_to_target, r.epochs_to_target),
                  "compute_to_target": ratio(none.compute_to_target, r.compute_to_target),
                  "seconds_to_target": ratio(none.seconds_to_target, r.seconds_to_target)}
              for p, r in results.items() if p != "none"}

    print(f"\ntarget: val acc >= {fmt(target, '.4f')} (best of none "
          f"{fmt(none.best_val_acc, '.4f')} - {100 * TARGET_GAP:.1f} points)")
    header = (f"{'pruner':<14} {'trials':>6} {'pruned':>6} {'epochs':>7} {'compute':>8} "
              f"{'time':>9} {'best val':>8} {'ep→target':>9} {'comp→target':>11} "
              f"{'time→target':>11}")
    print(header)
    for r in results.values():
        print(f"{r.pruner:<14} {r.trials:>6} {r.pruned:>6} {r.epochs:>7} {r.compute:>8.1f} "
              f"{r.seconds:>8.0f}s {fmt(r.best_val_acc, '.4f'):>8} "
              f"{fmt(r.epochs_to_target):>9} {fmt(r.compute_to_target, '.1f'):>11} "
              f"{fmt(r.seconds_to_target, '.0f'):>10}s")
    print()
    for p, q in ratios.items():
        met = q["compute"] is not None and q["compute"] >= GOALS[p]
        print(f"none / {p}: {fmt(q['compute'], '.2f')}x less compute "
              f"({fmt(q['epochs'], '.2f')}x fewer epochs), {fmt(q['seconds'], '.2f')}x less "
              f"time; to target: {fmt(q['compute_to_target'], '.2f')}x compute, "
              f"{fmt(q['seconds_to_target'], '.2f')}x time  "
              f"[goal >= {GOALS[p]:.0f}x compute: {'met' if met else 'NOT met'}]")
    agree, fixed_differ = same_trials(results_dir)
    print(f"same sampled configurations in all {len(PRUNERS)} studies: {agree}")
    if fixed_differ:
        print(f"fixed params that differ between studies: {'; '.join(fixed_differ)}")

    record_doc = study_doc("PRUNER", quick=args.quick, trials=trials, epochs=epochs,
                           subset=args.subset)
    record_doc["workers"]["checkpoint_dir"] = str(results_dir / "pruning-checkpoints")
    out = {
        "quick": args.quick, "measure_only": args.measure_only,
        "finished_at": datetime.now(UTC).isoformat(),
        "this_run_s": run_s, "trials": trials, "max_epochs": epochs,
        "target_gap": TARGET_GAP, "target_val_acc": target, "goal_ratios": GOALS,
        "same_trials": agree, "fixed_params_differ": fixed_differ,
        "study": record_doc,
        "results": {p: asdict(r) for p, r in results.items()}, "ratios": ratios,
        "machine": {"threads": threads, "torch": torch.__version__,
                    "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                    "platform": platform.platform(), "load_avg": os.getloadavg()},
    }
    path = results_dir / "pruning.json"
    with atomic_write(path) as file:
        file.write(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
