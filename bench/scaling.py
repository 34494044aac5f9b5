"""Finished trials per hour: 1 worker × 1 thread, 2 workers × 1 thread, 1 worker × 2 threads,
on SQLite and on PostgreSQL, for the same small study; and the cost of the per-epoch writes.

Every trial has the same architecture (only the learning rate is sampled), so all trials cost
the same and the figures compare coordination and thread scaling, not luck of the sampler.
Wall time runs from launching `hpsearch run` to its exit (worker start-up and data loading
included), as a user would see it; start-up is the median over workers of launch to first trial.

    python bench/scaling.py [--trials 10] [--epochs 3] [--subset 6000] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hpsearch.db.engine import make_engine  # noqa: E402
from hpsearch.db.models import Epoch, Study, Trial  # noqa: E402
from hpsearch.db.recorder import Recorder  # noqa: E402
from hpsearch.metrics import EpochMetrics  # noqa: E402

RESULTS = ROOT / "bench" / "results"
LAYOUTS = [(1, 1), (2, 1), (1, 2)]  # (workers, threads per worker)


def study_toml(name: str, trials: int, epochs: int, subset: int, folder: Path) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(f"""
[study]
name = "{name}"
sampler = "random"
pruner = "none"
n_trials = {trials}
seed = 0
[data]
dataset = "fashion-mnist"
subset = {subset}
[budget]
max_epochs = {epochs}
[workers]
checkpoint_dir = "{folder / 'checkpoints'}"
[space]
patch_size = 4
hidden_dim = 128
token_mlp_dim = 64
channel_mlp_dim = 512
num_blocks = 1
batch_size = 256
lr = {{ low = 5e-4, high = 5e-3, log = true }}
""")
    return path


def run_layout(url: str, workers: int, threads: int, args: argparse.Namespace,
               folder: Path) -> dict:
    name = f"scaling-{workers}x{threads}"
    path = study_toml(name, args.trials, args.epochs, args.subset, folder)
    launched_at = datetime.now(UTC)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "hpsearch", "run", str(path), "--db", url,
                           "--workers", str(workers), "--threads", str(threads), "--top", "0",
                           "--log-dir", str(folder / "logs")],
                          cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"{name} failed:\n{done.stdout}\n{done.stderr}")
    engine = make_engine(url)
    with engine.connect() as conn:
        study_id = conn.execute(Study.__table__.select().where(Study.name == name)).first().id
        trials = list(conn.execute(Trial.__table__.select().where(Trial.study_id == study_id)))
        trial_ids = [r.id for r in trials]
        epoch_seconds = [r.seconds for r in conn.execute(
            Epoch.__table__.select().where(Epoch.trial_id.in_(trial_ids)))]
    engine.dispose()
    first_start: dict[str, datetime] = {}
    for trial in trials:  # SQLite hands back naive UTC datetimes
        at = trial.started_at.replace(tzinfo=trial.started_at.tzinfo or UTC)
        first_start[trial.worker] = min(at, first_start.get(trial.worker, at))
    startup = [(at - launched_at).total_seconds() for at in first_start.values()]
    return {"workers": workers, "threads": threads, "wall_s": wall,
            "trials": len(trial_ids), "trials_per_hour": len(trial_ids) / wall * 3600,
            "median_epoch_s": statistics.median(epoch_seconds),
            "startup_s": statistics.median(startup)}


def write_cost(url: str, repeats: int = 60) -> float:
    """Median seconds of one epoch's writes: our epoch row + summary, and Optuna's report."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    engine = make_engine(url)
    recorder = Recorder(engine)
    study = optuna.create_study(study_name="write-cost", storage=url, direction="maximize",
                                load_if_exists=True)
    row = recorder.ensure_study("write-cost", study._study_id, {}, {"n_trials": repeats},
                                "synthetic")
    trial = study.ask()
    trial_row = recorder.start_trial(row, trial.number, trial._trial_id, {}, [], "bench", None,
                                     seed=0)
    times = []
    for epoch in range(1, repeats + 1):
        metrics = EpochMetrics(epoch, 0.5, 0.8, 0.5, 0.8, 1e-3, 2.0, 3000.0)
        started = time.perf_counter()
        recorder.record_epoch(trial_row, metrics)
        trial.report(metrics.val_acc, epoch)
        trial.should_prune()
        times.append(time.perf_counter() - started)
    engine.dispose()
    return statistics.median(times)


def start_postgres():
    from tests.conftest import PostgresServer, find_pg_bin

    bin_dir = find_pg_bin()
    if bin_dir is None:
        return None
    root = Path(tempfile.mkdtemp(prefix="hps-pg-"))  # mkdtemp's own dir: postgres may enter
    if os.geteuid() == 0:
        shutil.chown(root, user="postgres")
    server = PostgresServer(bin_dir, root)
    server.initdb()
    server.start()
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--subset", type=int, default=6000)
    parser.add_argument("--quick", action="store_true", help="2 trials of 1 epoch (smoke run)")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS / "scaling.json",
                        help="where the figures go as JSON")
    args = parser.parse_args()
    if args.quick:
        args.trials, args.epochs, args.subset = 2, 1, 1000
    args.out.parent.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict] | dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        server = None if args.no_postgres else start_postgres()
        backends = {"sqlite": f"sqlite:///{folder / 'scaling.db'}"}
        if server is not None:
            backends["postgresql"] = server.url(server.create_database())
        try:
            for backend, url in backends.items():
                rows = []
                for workers, threads in LAYOUTS:
                    row = run_layout(url, workers, threads, args, folder)
                    rows.append(row)
                    print(f"{backend:10s} {workers} worker(s) x {threads} thread(s): "
                          f"{row['trials']} trials in {row['wall_s']:.1f} s = "
                          f"{row['trials_per_hour']:.0f} trials/h, median epoch "
                          f"{row['median_epoch_s']:.2f} s, worker start-up (launch to first "
                          f"trial) {row['startup_s']:.1f} s", flush=True)
                results[backend] = rows
                cost = write_cost(url)
                epoch = statistics.median(r["median_epoch_s"] for r in rows)
                results[f"{backend}_write"] = {"write_s": cost, "epoch_s": epoch,
                                               "share": cost / epoch}
                print(f"{backend:10s} writes per epoch: {cost * 1000:.1f} ms = "
                      f"{100 * cost / epoch:.2f}% of a {epoch:.2f} s epoch", flush=True)
        finally:
            if server is not None:
                server.stop()
    args.out.write_text(json.dumps(results, indent=2))
    for backend in backends:
        rows = {(r["workers"], r["threads"]): r["trials_per_hour"] for r in results[backend]}
        best = "2 workers x 1 thread" if rows[(2, 1)] >= rows[(1, 2)] else "1 worker x 2 threads"
        print(f"{backend}: 2x1 / 1x1 = {rows[(2, 1)] / rows[(1, 1)]:.2f}x, "
              f"1x2 / 1x1 = {rows[(1, 2)] / rows[(1, 1)]:.2f}x, best layout: {best}")


if __name__ == "__main__":
    main()
