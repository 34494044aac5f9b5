"""Many workers on one database: the search's own overhead, measured with dry-run trials.

For each N in --workers, N worker processes (`hpsearch worker`, one process each) run a fresh
dry-run study ([dry_run]: a sleep per epoch and a synthetic curve; TPE sampler, median pruner)
of N × --trials-per-worker trials on one throwaway PostgreSQL on loopback (or one SQLite file).
Each worker imports everything, loads the study and waits at a start line right before its
loop, so the wall time measures the search (asks, tells, epoch writes, heartbeats, stale-trial
checks, idle waits), not start-up, which is reported apart (launch to all ready: Python
imports, schema checks, loading the study; CPU-bound, so on 2 cores it grows with N).
Printed per N:

- wall against the minimum (epochs actually run × epoch length / N) and their ratio;
- SQL statements per finished trial, ours (hps_ tables, locks) and Optuna's, counted in every
  worker with SQLAlchemy's before_cursor_execute event on all engines;
- peak connections to the study's PostgreSQL database (pg_stat_activity, polled every 0.1 s);
- p50/p99 of Optuna's ask and tell and of our epoch write, in milliseconds;
- lost and duplicated trials and epochs: Optuna's finished trials against the target, our
  trial rows against Optuna's trials, our epoch rows against Optuna's intermediate values.

Separately (--ask-at): the TPE sampler's ask latency on a study already holding 1,000 and
10,000 finished trials (made with Optuna's add_trials), first ask and warm p50/p99.

    python bench/load.py [--workers 1,4,16,64] [--db postgres|sqlite] [--trials-per-worker 2]
                         [--epochs 3] [--epoch-seconds 1] [--ask-at 1000,10000] [--plain]

--plain: with one worker, the same trials are also run by plain Optuna (`study.optimize` with
the same sampler, pruner and dry-run curve, nothing else of hpsearch) on the same database, and
hpsearch's statements and worker CPU per trial are printed against it.

Results go to bench/results/load-<db>.json. PostgreSQL runs with fsync off (a throwaway
cluster, as in the tests): commits on a durable server cost more.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
MAX_CONNECTIONS = 1000  # the throwaway server's limit: the bench measures the peak, not the cap


def study_toml(folder: Path, name: str, trials: int, epochs: int, epoch_s: float) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(f"""
[study]
name = "{name}"
sampler = "tpe"
pruner = "median"
n_trials = {trials}

[dry_run]
seconds_per_epoch = {epoch_s}

[budget]
max_epochs = {epochs}

[pruner]
startup_trials = 5

[workers]
heartbeat_interval = 2   # short, so that heartbeats and stale-trial checks happen in a short run
grace_period = 10
checkpoint_dir = "{folder / 'checkpoints'}"

[space]
lr = {{ low = 1e-4, high = 1e-1, log = true }}
dropout = {{ low = 0.0, high = 0.5 }}
hidden_dim = [64, 128, 256]
num_blocks = {{ low = 1, high = 4 }}
batch_size = [64, 128, 256]
""")
    return path


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- one worker (run as `load.py _worker ...`) ---------------------------------------------------

def worker_main(url: str, name: str, index: int, out: Path, go: Path) -> None:
    """A `hpsearch worker`, instrumented: statement counts and latencies go to `out` at exit."""
    import optuna
    import optuna.study._optimize as optimize
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    import hpsearch.search.space
    import hpsearch.search.worker  # imported before the start line, not timed
    from hpsearch.cli import app
    from hpsearch.db.recorder import Recorder

    counts = {"ours": 0, "optuna": 0}
    times: dict[str, list[float]] = {"ask": [], "tell": [], "epoch_write": []}

    @event.listens_for(Engine, "before_cursor_execute")
    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        ours = "hps_" in statement or "pg_advisory" in statement or "LOCK TABLE" in statement
        counts["ours" if ours else "optuna"] += 1

    marks: dict[str, float] = {}  # wall-clock times: first ask, last tell done
    events: list[tuple[str, float, float]] = []  # (what, start, end) of every timed call

    def timed(key: str, function: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            marks.setdefault(f"first_{key}", time.time())
            wall = time.time()
            try:
                return function(*args, **kwargs)
            finally:
                times[key].append(time.perf_counter() - started)
                marks[f"last_{key}_done"] = time.time()
                events.append((key, wall, marks[f"last_{key}_done"]))
        return call

    optuna.Study.ask = timed("ask", optuna.Study.ask)
    optimize._tell_with_warning = timed("tell", optimize._tell_with_warning)
    Recorder.record_epoch = timed("epoch_write", Recorder.record_epoch)
    watcher_start = hpsearch.search.worker.StaleTrialWatcher.start
    cpu_at_go = 0.0  # CPU seconds used before the start line (imports, loading the study)

    def start_line(watcher: Any) -> None:
        """Started right before the worker's loop: wait here until every worker is ready."""
        Path(f"{out}.ready").touch()
        while not go.exists():
            time.sleep(0.02)
        marks["go"] = time.time()
        nonlocal cpu_at_go
        cpu_at_go = cpu_seconds()
        watcher_start(watcher)

    hpsearch.search.worker.StaleTrialWatcher.start = start_line
    started = time.monotonic()
    code: Any = 0
    try:
        app(["worker", name, "--db", url, "--worker-index", str(index)])
    except SystemExit as exc:
        code = exc.code
    finally:
        out.write_text(json.dumps({
            "statements": counts, "times": times, "exit": code, "marks": marks, "events": events,
            "ended": time.time(),
            "seconds": time.monotonic() - started,
            "cpu_s": cpu_seconds() - cpu_at_go,
            "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def plain_main(url: str, name: str, trials: int, epochs: int, epoch_s: float, out: Path,
               go: Path) -> None:
    """The same dry-run trials on the same database with plain Optuna, as its docs show it:
    RDB storage with heartbeats and the retry callback, the same TPE (seed and options) and
    median pruner, the same five parameters, a sleep and the dry run's synthetic value per
    epoch, reported and pruned each epoch. Of hpsearch only the dry run's curve (a pure
    function) is used, so that both arms run the same trials and prune the same epochs. The
    baseline of hpsearch's statements and CPU per trial."""
    import optuna
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    from hpsearch.params import TrialParams
    from hpsearch.search.dryrun import synthetic_epoch

    statements = 0

    @event.listens_for(Engine, "before_cursor_execute")
    def count(*_args: Any) -> None:
        nonlocal statements
        statements += 1

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(
        url, heartbeat_interval=2, grace_period=10,
        failed_trial_callback=optuna.storages.RetryFailedTrialCallback(max_retry=2))
    study = optuna.create_study(
        study_name=name, storage=storage, direction="maximize", load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=0, multivariate=True, group=True,
                                           constant_liar=True),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=5))

    def objective(trial: optuna.Trial) -> float:
        # in the order hpsearch's worker asks for them, so that both draw the same values
        trial.suggest_categorical("hidden_dim", [64, 128, 256])
        trial.suggest_int("num_blocks", 1, 4)
        trial.suggest_float("dropout", 0.0, 0.5)
        trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        trial.suggest_categorical("batch_size", [64, 128, 256])
        params = TrialParams.from_dict(trial.params)
        best = 0.0
        for epoch in range(1, epochs + 1):
            time.sleep(epoch_s)
            value = synthetic_epoch(params, epoch, trial.number, epoch_s).val_acc
            best = max(best, value)
            trial.report(value, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return best

    Path(f"{out}.ready").touch()
    while not go.exists():
        time.sleep(0.02)
    statements, cpu_at_go = 0, cpu_seconds()
    study.optimize(objective, n_trials=trials, gc_after_trial=False)
    out.write_text(json.dumps({"statements": statements, "cpu_s": cpu_seconds() - cpu_at_go,
                               "finished": len(study.trials),
                               "epochs_run": sum(len(t.intermediate_values)
                                                 for t in study.trials)}))


def compare_with_plain(url: str, folder: Path, args: argparse.Namespace,
                       hpsearch_run: dict[str, Any]) -> dict[str, Any]:
    """One worker of plain Optuna on the same database, against hpsearch's one-worker run."""
    out, go = folder / "plain.json", folder / "go-plain"
    proc = subprocess.Popen([sys.executable, __file__, "_plain", url, "plain",
                             str(args.trials_per_worker), str(args.epochs),
                             str(args.epoch_seconds), str(out), str(go)],
                            stdout=subprocess.DEVNULL, stderr=open(f"{out}.log", "w"))  # noqa: SIM115
    while not Path(f"{out}.ready").exists():
        if proc.poll() is not None:
            raise SystemExit(f"the plain Optuna worker died while starting: see {out}.log")
        time.sleep(0.05)
    go.touch()
    proc.wait()
    plain = json.loads(out.read_text())
    ours = {"statements_per_trial": hpsearch_run["statements_per_trial_total"],
            "worker_cpu_s_per_trial": hpsearch_run["worker_cpu_s_per_trial"]}
    theirs = {"statements_per_trial": round(plain["statements"] / max(1, plain["finished"]), 1),
              "worker_cpu_s_per_trial": round(plain["cpu_s"] / max(1, plain["finished"]), 3)}
    ratio = {k: round(ours[k] / theirs[k], 2) if theirs[k] else None for k in ours}
    epochs = {"hpsearch": hpsearch_run["integrity"]["epochs_run"], "plain": plain["epochs_run"]}
    print(f"1 worker, {args.trials_per_worker} trials ({epochs['hpsearch']} and "
          f"{epochs['plain']} epochs run): statements per trial hpsearch "
          f"{ours['statements_per_trial']} vs plain Optuna {theirs['statements_per_trial']} "
          f"({ratio['statements_per_trial']}x); worker CPU-s per trial "
          f"{ours['worker_cpu_s_per_trial']} vs {theirs['worker_cpu_s_per_trial']} "
          f"({ratio['worker_cpu_s_per_trial']}x)", flush=True)
    return {"hpsearch": ours, "plain_optuna": theirs, "ratio": ratio, "epochs_run": epochs}


# --- the driver ----------------------------------------------------------------------------------

class ConnectionPoller(threading.Thread):
    """Peak number of backends connected to one PostgreSQL database."""

    def __init__(self, conninfo: str, dbname: str) -> None:
        super().__init__(daemon=True)
        self.conninfo, self.dbname, self.peak = conninfo, dbname, 0
        self.stopped = threading.Event()

    def run(self) -> None:
        import psycopg

        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            while not self.stopped.wait(0.1):
                (n,) = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s",
                                    (self.dbname,)).fetchone()
                self.peak = max(self.peak, n)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def check_integrity(url: str, name: str, target: int) -> dict[str, int]:
    """Lost / duplicated trials and epochs, from Optuna's tables and ours."""
    import optuna
    from sqlalchemy import func, select
    from sqlalchemy.orm import Session

    from hpsearch.db.engine import make_engine
    from hpsearch.db.models import Epoch, Study, Trial

    frozen = optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)
    finished = [t for t in frozen if t.state.is_finished() and t.state.name != "FAIL"]
    engine = make_engine(url)
    with Session(engine) as session:
        study_id = session.scalar(select(Study.id).where(Study.name == name))
        rows = session.execute(select(Trial.optuna_trial_id, Trial.id, Trial.epochs_run)
                               .where(Trial.study_id == study_id)).all()
        epochs = dict(session.execute(
            select(Epoch.trial_id, func.count()).join(Trial, Trial.id == Epoch.trial_id)
            .where(Trial.study_id == study_id).group_by(Epoch.trial_id)).all())
    engine.dispose()
    by_optuna = {r.optuna_trial_id: r for r in rows}
    lost_epochs = dup_epochs = 0
    for trial in finished:
        row = by_optuna.get(trial._trial_id)
        stored = epochs.get(row.id, 0) if row else 0
        reported = len(trial.intermediate_values)
        lost_epochs += max(0, reported - stored)
        dup_epochs += max(0, stored - reported)
    return {
        "finished": len(finished),
        "lost_trials": max(0, target - len(finished)) + sum(
            1 for t in frozen if t._trial_id not in by_optuna),
        "duplicated_trials": max(0, len(finished) - target) + (len(rows) - len(by_optuna)),
        "lost_epochs": lost_epochs,
        "duplicated_epochs": dup_epochs,
        "epochs_run": sum(len(t.intermediate_values) for t in finished),
        "failed": sum(1 for t in frozen if t.state.name == "FAIL"),
    }


def run_load(n: int, url: str, folder: Path, args: argparse.Namespace,
             poller: ConnectionPoller | None) -> dict[str, Any]:
    from hpsearch.api import create_study

    name = f"load-{n}"
    target = n * args.trials_per_worker
    create_study(study_toml(folder, name, target, args.epochs, args.epoch_seconds), url)
    go = folder / f"go-{n}"
    outs = [folder / f"worker-{n}-{i}.json" for i in range(n)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    launched = time.monotonic()
    procs = [subprocess.Popen([sys.executable, __file__, "_worker", url, name, str(i),
                               str(out), str(go)], env=env, stdout=subprocess.DEVNULL,
                              stderr=open(f"{out}.log", "w"))  # noqa: SIM115
             for i, out in enumerate(outs)]
    while not all(Path(f"{out}.ready").exists() for out in outs):
        if any(p.poll() is not None for p in procs):
            raise SystemExit(f"a worker died while starting: see {outs[0]}.log")
        time.sleep(0.05)
    ready_s = time.monotonic() - launched
    if poller is not None:
        poller.start()
    go.touch()
    started = time.monotonic()
    for proc in procs:
        proc.wait()
    exited = time.monotonic() - started
    if poller is not None:
        poller.stopped.set()
        poller.join()
    reports = [json.loads(out.read_text()) for out in outs]
    go_at = min(r["marks"]["go"] for r in reports)
    # where the wall goes: from the start line to each worker's first ask (loading the study),
    # and from the study's last tell to the last worker's exit (noticing the end)
    first_ask = [r["marks"]["first_ask"] - go_at for r in reports if "first_ask" in r["marks"]]
    last_tell = max((r["marks"].get("last_tell_done", 0) for r in reports), default=0)
    # the search's wall: start line to the last worker leaving its loop (the interpreter's own
    # exit, ~1 s of teardown on a busy 2-core machine, is reported apart)
    wall = max(r["ended"] for r in reports) - go_at
    integrity = check_integrity(url, name, target)
    minimum = integrity["epochs_run"] * args.epoch_seconds / n
    statements = {k: sum(r["statements"][k] for r in reports) for k in ("ours", "optuna")}
    per_trial = {k: v / max(1, integrity["finished"]) for k, v in statements.items()}
    latency = {key: {"p50_ms": round(1000 * (percentile(all_, 0.5) or 0), 1),
                     "p99_ms": round(1000 * (percentile(all_, 0.99) or 0), 1), "n": len(all_)}
               for key in ("ask", "tell", "epoch_write")
               for all_ in [[t for r in reports for t in r["times"][key]]]}
    return {
        "workers": n, "trials": target, "start_up_s": round(ready_s, 1),
        "wall_s": round(wall, 2), "wall_to_process_exit_s": round(exited, 2),
        "minimum_s": round(minimum, 2),
        "overhead": round(wall / minimum, 3) if minimum else None,
        "statements_per_trial": {k: round(v, 1) for k, v in per_trial.items()},
        "statements_per_trial_total": round(sum(per_trial.values()), 1),
        "go_to_first_ask_s": {"median": round(percentile(first_ask, 0.5) or 0, 2),
                              "max": round(max(first_ask, default=0), 2)},
        "last_tell_to_last_exit_s": round(max(r["ended"] for r in reports) - last_tell, 2),
        "peak_connections": poller.peak if poller is not None else None,
        "latency": latency, "integrity": integrity,
        "worker_exit_codes": sorted({str(r["exit"]) for r in reports}),
        "max_rss_mb": round(max(r["max_rss_mb"] for r in reports)),
        # CPU the workers used after the start line, per finished trial: what sizes the cores a
        # given number of workers needs, whatever else the machine was doing
        "worker_cpu_s_per_trial": round(sum(r.get("cpu_s", 0) for r in reports)
                                        / max(1, integrity["finished"]), 3),
    }


def ask_latency(url: str, sizes: list[int], asks: int) -> list[dict[str, Any]]:
    """TPE's ask on a study that already holds `size` finished trials of the bench's space."""
    import optuna
    from optuna.distributions import json_to_distribution

    from hpsearch.search.space import make_sampler, suggest
    from hpsearch.search.study_file import load_study
    from hpsearch.spec import dimension_json

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    folder = Path(tempfile.mkdtemp(prefix="hps-ask-"))
    config = load_study(study_toml(folder, "ask", 1, 3, 0))
    dists = {k: json_to_distribution(json.dumps(dimension_json(d)))
             for k, d in config.space.items()}
    out = []
    for size in sizes:
        name = f"ask-{size}"
        optuna.create_study(study_name=name, storage=url, direction="maximize")
        # the study as a sampler fills it, fast: random points, a synthetic value each
        filler = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        trials = []
        for i in range(size):
            trial = filler.ask(dists)
            trials.append(optuna.trial.create_trial(
                params=trial.params, distributions=dists, value=0.5 + (i % 97) / 200,
                intermediate_values={1: 0.4, 2: 0.45, 3: 0.5}))
            filler.tell(trial, 0.0)
        built = time.monotonic()
        storage = optuna.storages.RDBStorage(url)
        optuna.load_study(study_name=name, storage=storage).add_trials(trials)
        build_s = time.monotonic() - built
        # a fresh process's view: a new storage and study, as a worker has
        study = optuna.load_study(study_name=name, storage=optuna.storages.RDBStorage(url),
                                  sampler=make_sampler(config))
        latencies = []
        for _ in range(asks):
            started = time.perf_counter()
            trial = study.ask()
            suggest(trial, config)
            latencies.append(time.perf_counter() - started)
            study.tell(trial, 0.5)
        out.append({"finished_trials": size, "first_ask_s": round(latencies[0], 3),
                    "warm_p50_s": round(percentile(latencies[1:], 0.5) or 0, 3),
                    "warm_p99_s": round(percentile(latencies[1:], 0.99) or 0, 3),
                    "asks": asks, "build_s": round(build_s, 1)})
        print(f"TPE ask with {size:,} finished trials: first {latencies[0]:.2f} s, then p50 "
              f"{out[-1]['warm_p50_s']:.3f} s, p99 {out[-1]['warm_p99_s']:.3f} s", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", default="1,4,16,64")
    parser.add_argument("--db", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--trials-per-worker", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--epoch-seconds", type=float, default=1.0)
    parser.add_argument("--ask-at", default="", help="e.g. 1000,10000 (PostgreSQL only)")
    parser.add_argument("--asks", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--plain", action="store_true",
                        help="also run plain Optuna on the same trials and database (1 worker) "
                        "and compare statements and worker CPU per trial")
    args = parser.parse_args()
    from tests.conftest import PostgresServer, find_pg_bin

    folder = Path(tempfile.mkdtemp(prefix="hps-load-"))
    server = None
    if args.db == "postgres":
        bin_dir = find_pg_bin()
        if bin_dir is None:
            raise SystemExit("no PostgreSQL server binaries (apt-get install postgresql)")
        root = Path(tempfile.mkdtemp(prefix="hps-load-pg-"))
        os.chmod(root, 0o777)
        server = PostgresServer(bin_dir, root)
        server.initdb()
        with open(server.data_dir / "postgresql.conf", "a") as conf:
            conf.write(f"\nmax_connections = {MAX_CONNECTIONS}\n")
        server.start()
        server.reap_when_gone(os.getpid())
    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"), "db": args.db,
        "cpus": os.cpu_count(), "trials_per_worker": args.trials_per_worker,
        "epochs": args.epochs, "epoch_seconds": args.epoch_seconds, "runs": []}
    print(f"{'N':>3} {'wall':>7} {'min':>6} {'ratio':>6} {'stmt/trial':>17} {'conns':>5} "
          f"{'ask p50/p99':>12} {'tell p50/p99':>13} {'epoch p50/p99':>13} lost/dup", flush=True)
    try:
        for n in [int(x) for x in args.workers.split(",")]:
            if server is not None:
                dbname = server.create_database()
                url = server.url(dbname)
                poller: ConnectionPoller | None = ConnectionPoller(server.conninfo(), dbname)
            else:
                url, poller = f"sqlite:///{folder / f'load-{n}.db'}", None
            run = run_load(n, url, folder, args, poller)
            results["runs"].append(run)
            if args.plain and n == 1:
                results["plain_optuna"] = compare_with_plain(url, folder, args, run)
            lat, integ = run["latency"], run["integrity"]
            st = run["statements_per_trial"]
            print(f"{n:>3} {run['wall_s']:>6.1f}s {run['minimum_s']:>5.1f}s "
                  f"{run['overhead']:>6.2f} {st['ours']:>6.1f}+{st['optuna']:>6.1f} opt "
                  f"{run['peak_connections'] or '-':>5} "
                  + " ".join(f"{lat[k]['p50_ms']:>6.0f}/{lat[k]['p99_ms']:<6.0f}"
                             for k in ("ask", "tell", "epoch_write"))
                  + f" {integ['lost_trials']}/{integ['duplicated_trials']} trials, "
                    f"{integ['lost_epochs']}/{integ['duplicated_epochs']} epochs", flush=True)
        if args.ask_at and server is not None:
            url = server.url(server.create_database())
            results["ask_latency"] = ask_latency(url, [int(x) for x in args.ask_at.split(",")],
                                                 args.asks)
    finally:
        if server is not None:
            server.stop()
    out = args.out or RESULTS / f"load-{args.db}.json"
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"written to {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_worker":
        worker_main(sys.argv[2], sys.argv[3], int(sys.argv[4]), Path(sys.argv[5]),
                    Path(sys.argv[6]))
    elif len(sys.argv) > 1 and sys.argv[1] == "_plain":
        plain_main(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]),
                   float(sys.argv[6]), Path(sys.argv[7]), Path(sys.argv[8]))
    else:
        main()
