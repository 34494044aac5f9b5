"""Query speed on a large study: plain Optuna vs the hpsearch query commands, whole processes.

Builds once (cached under bench/results/, resumable chunk by chunk) a synthetic study of
10,000 trials x 30 epochs in BOTH our tables (hps_study/hps_trial/hps_epoch: 300,000 epoch rows)
and Optuna's own tables (trials, trial_params, trial_values, trial_intermediate_values: 30
intermediate values per trial), written with bulk INSERTs through Optuna's own SQLAlchemy
models, so the schema is exactly Optuna 5.0's (study.add_trials takes ~40 ms a trial here, 7
minutes for 10,000). Then times, alternating, medians over --repeat rounds:

  optuna best-trial --study-name X --storage URL   vs  hpsearch best X --db URL
  optuna trials --study-name X --storage URL       vs  hpsearch trials X --top 20 --db URL
  python -c "load_study(..).trials_dataframe().to_csv(..)"
                                                   vs  hpsearch export X --what trials -f csv
  hpsearch report X                                (time and file size; must stay < 50 MB)

    .venv/bin/python bench/queries.py                          # SQLite, ~4 min once built
    .venv/bin/python bench/queries.py --pg postgresql+psycopg://hps@127.0.0.1:55432/hps
    nohup .venv/bin/python bench/queries.py > bench/results/queries.log 2>&1 &

trials_dataframe() needs pandas (`pip install pandas`); that comparison is skipped without it.
The results go to stdout and, as Markdown, to bench/results/queries-<backend>.md.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
)
from optuna.storages._rdb import models as om
from optuna.trial import TrialState
from sqlalchemy import Connection, func, insert, select

from hpsearch.db.engine import make_engine, mask_url
from hpsearch.db.migrate import upgrade
from hpsearch.db.models import Epoch, Study, Trial
from hpsearch.db.optuna_link import row_marker
from hpsearch.db.optuna_tables import set_marker
from hpsearch.params import TrialParams
from hpsearch.search.study_file import parse_study

RESULTS = Path(__file__).resolve().parent / "results"
BIN = Path(sys.executable).parent
STUDY = "bench-10k"
CHUNK = 500  # trials per transaction: the unit of resumption
START = datetime(2025, 1, 1, tzinfo=UTC)
DEFAULTS = TrialParams().to_dict()  # every trial row holds all params, the fixed ones too
SPACE: dict[str, BaseDistribution] = {
    "patch_size": CategoricalDistribution([2, 4, 7, 14]),
    "hidden_dim": IntDistribution(32, 512, log=True),
    "token_mlp_dim": IntDistribution(16, 256, log=True),
    "channel_mlp_dim": IntDistribution(64, 1024, log=True),
    "num_blocks": IntDistribution(1, 8),
    "dropout": FloatDistribution(0.0, 0.5),
    "optimizer": CategoricalDistribution(["sgd", "adam", "adamw", "radam"]),
    "lr": FloatDistribution(1e-4, 1e-1, log=True),
    "weight_decay": FloatDistribution(1e-6, 1e-1, log=True),
    "init": CategoricalDistribution(["default", "xavier_uniform", "kaiming_uniform", "normal"]),
    "batch_size": CategoricalDistribution([64, 128, 256, 512]),
    "activation": CategoricalDistribution(["gelu", "relu"]),
    "scheduler": CategoricalDistribution(["none", "cosine", "plateau"]),
}


def study_config(epochs: int) -> dict[str, Any]:
    space: dict[str, Any] = {}
    for name, dist in SPACE.items():
        if isinstance(dist, CategoricalDistribution):
            space[name] = list(dist.choices)
        else:
            space[name] = {"low": dist.low, "high": dist.high, "log": dist.log}
    return {"study": {"name": STUDY, "sampler": "tpe", "pruner": "hyperband",
                      "n_trials": 10_000, "seed": 0},
            "data": {"dataset": "fashion-mnist", "val_fraction": 0.1},
            "budget": {"max_epochs": epochs}, "space": space}


# --- synthetic trials ----------------------------------------------------------------------

def _sample(rng: random.Random, dist: BaseDistribution) -> Any:
    if isinstance(dist, CategoricalDistribution):
        return rng.choice(dist.choices)
    assert isinstance(dist, FloatDistribution | IntDistribution)
    if dist.log:
        value = math.exp(rng.uniform(math.log(dist.low), math.log(dist.high)))
    else:
        value = rng.uniform(dist.low, dist.high)
    return round(value) if isinstance(dist, IntDistribution) else value


def synthetic_trial(number: int, epochs: int) -> dict[str, Any]:
    """Deterministic per trial number, so an interrupted build resumes with the same rows."""
    rng = random.Random(number)
    state = rng.choices(("complete", "pruned", "failed"), weights=(88, 10, 2))[0]
    ceiling, speed = rng.uniform(0.55, 0.93), rng.uniform(2.0, 8.0)
    curve = []
    for epoch in range(1, epochs + 1):
        acc = ceiling * (1 - math.exp(-epoch / speed)) + rng.gauss(0, 0.004)
        curve.append({"epoch": epoch, "train_loss": 2.3 * math.exp(-epoch / speed) + 0.15,
                      "train_acc": min(0.999, acc + 0.02), "val_loss": 2.3 * (1 - acc) + 0.1,
                      "val_acc": acc, "lr": 1e-3, "seconds": rng.uniform(10, 14),
                      "images_per_s": rng.uniform(4000, 5000)})
    peak = max(curve, key=lambda row: row["val_acc"])
    started = START + timedelta(seconds=6 * 60 * number)
    seconds = sum(row["seconds"] for row in curve)
    return {"number": number, "state": state, "curve": curve, "peak": peak,
            "params": {name: _sample(rng, dist) for name, dist in SPACE.items()},
            "started": started, "finished": started + timedelta(seconds=seconds),
            "seconds": seconds}


OPTUNA_STATE = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED,
                "failed": TrialState.FAIL}


def _insert_returning(conn: Connection, table: Any, key: Any,
                      rows: list[dict[str, Any]]) -> list[int]:
    """Bulk INSERT (one executemany) that returns the new ids in the order of `rows`."""
    stmt = insert(table).returning(key, sort_by_parameter_order=True)
    return list(conn.scalars(stmt, rows))


def _insert_chunk(conn: Connection, ids: dict[str, int], trials: list[dict[str, Any]]) -> None:
    """One chunk into both schemas, in the caller's transaction (both or neither)."""
    finite = om.TrialValueModel.TrialValueType.FINITE
    finite_step = om.TrialIntermediateValueModel.TrialIntermediateValueType.FINITE
    optuna_ids = _insert_returning(conn, om.TrialModel, om.TrialModel.trial_id, [
        {"number": t["number"], "study_id": ids["optuna"], "state": OPTUNA_STATE[t["state"]],
         "datetime_start": t["started"].replace(tzinfo=None),  # Optuna stores naive UTC
         "datetime_complete": t["finished"].replace(tzinfo=None)} for t in trials])
    our_ids = _insert_returning(conn, Trial, Trial.id, [
        {"study_id": ids["ours"], "number": t["number"], "optuna_trial_id": oid,
         "state": t["state"], "params": {**DEFAULTS, "epochs": len(t["curve"]), **t["params"]},
         "sampled": list(t["params"]), "seed": t["number"], "value": t["peak"]["val_acc"],
         "best_epoch": t["peak"]["epoch"], "epochs_run": len(t["curve"]),
         "n_params": 100_000 + 500 * t["params"]["hidden_dim"], "started_at": t["started"],
         "finished_at": t["finished"], "seconds": t["seconds"],
         "worker": f"bench:{t['number'] % 4}",
         "reason": {"pruned": "pruned by HyperbandPruner", "failed": "diverged"}.get(t["state"])}
        for t, oid in zip(trials, optuna_ids, strict=True)])
    params, values, steps, epochs = [], [], [], []
    for t, oid, hid in zip(trials, optuna_ids, our_ids, strict=True):
        params += [{"trial_id": oid, "param_name": name,
                    "param_value": SPACE[name].to_internal_repr(value),
                    "distribution_json": distribution_to_json(SPACE[name])}
                   for name, value in t["params"].items()]
        if t["state"] != "failed":  # Optuna keeps no value for failed trials
            value = t["peak"]["val_acc"] if t["state"] == "complete" else t["curve"][-1]["val_acc"]
            values.append({"trial_id": oid, "objective": 0, "value": value,
                           "value_type": finite})
        steps += [{"trial_id": oid, "step": row["epoch"], "intermediate_value": row["val_acc"],
                   "intermediate_value_type": finite_step} for row in t["curve"]]
        epochs += [{"trial_id": hid, **row} for row in t["curve"]]
    for table, rows in ((om.TrialParamModel, params), (om.TrialValueModel, values),
                        (om.TrialIntermediateValueModel, steps), (Epoch, epochs)):
        if rows:
            conn.execute(insert(table), rows)


def build(url: str, n_trials: int, epochs: int) -> None:
    """Create (or finish) the study; a no-op when it is already complete."""
    upgrade(url)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ostudy = optuna.create_study(study_name=STUDY, storage=url, direction="maximize",
                                 load_if_exists=True)
    engine = make_engine(url)
    with engine.begin() as conn:
        ours = conn.scalar(select(Study.id).where(Study.name == STUDY))
        if ours is None:
            config = parse_study(study_config(epochs))  # stored as the runner stores it
            config.n_trials = n_trials
            ours = conn.scalar(insert(Study).returning(Study.id), {
                "name": STUDY, "optuna_study_id": ostudy._study_id, "dataset": "fashion-mnist",
                "spec": config.spec_json(), "settings": config.settings_json(),
                "created_at": START})
            # tie Optuna's study to our row, as the runner does (else every command refuses
            # the study as re-created in Optuna: hpsearch.db.optuna_link)
            set_marker(conn, ostudy._study_id, row_marker(ours, START))
    ids = {"ours": ours, "optuna": ostudy._study_id}
    with engine.connect() as conn:
        done = conn.scalar(select(func.count()).where(Trial.study_id == ours)) or 0
    if done >= n_trials:
        print(f"study {STUDY}: {done:,} trials already built in {mask_url(url)}")
        engine.dispose()
        return
    began = time.perf_counter()
    for start in range(done, n_trials, CHUNK):
        batch = [synthetic_trial(n, epochs) for n in range(start, min(start + CHUNK, n_trials))]
        with engine.begin() as conn:
            _insert_chunk(conn, ids, batch)
        print(f"  built {start + len(batch):,}/{n_trials:,} trials "
              f"({time.perf_counter() - began:.0f} s)", flush=True)
    engine.dispose()


# --- timing --------------------------------------------------------------------------------

def timed(command: list[str], env: dict[str, str]) -> float:
    began = time.perf_counter()
    result = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=env)
    elapsed = time.perf_counter() - began
    if result.returncode != 0:
        raise SystemExit(f"failed ({result.returncode}): {' '.join(command)}\n"
                         f"{result.stderr[-2000:]}")
    return elapsed


def pairs(url: str, work: Path) -> list[tuple[str, list[str] | None, list[str]]]:
    optuna_cli = [str(BIN / "optuna"), "--storage", url]
    hps = [str(BIN / "hpsearch")]
    db = ["--db", url]
    export_csv = ("import optuna, sys; optuna.load_study(study_name=sys.argv[1], "
                  "storage=sys.argv[2]).trials_dataframe().to_csv(sys.argv[3])")
    try:
        import pandas  # noqa: F401  (trials_dataframe needs it)
        dataframe = [sys.executable, "-c", export_csv, STUDY, url, str(work / "optuna.csv")]
    except ImportError:
        print("pandas is missing: skipping trials_dataframe().to_csv()")
        dataframe = None
    return [
        ("best trial", [*optuna_cli, "best-trial", "--study-name", STUDY],
         [*hps, "best", STUDY, *db]),
        ("leaderboard", [*optuna_cli, "trials", "--study-name", STUDY],
         [*hps, "trials", STUDY, "--top", "20", *db]),
        ("export trials as CSV", dataframe,
         [*hps, "export", STUDY, "--what", "trials", "--format", "csv", "-o",
          str(work / "hps.csv"), *db]),
    ]


def measure(url: str, repeat: int) -> list[str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "COLUMNS": "200"}
    lines = ["| command | plain Optuna | hpsearch | speed-up |", "|---|---|---|---|"]
    with tempfile.TemporaryDirectory(prefix="hps-bench-") as tmp:
        work = Path(tmp)
        for label, theirs, ours in pairs(url, work):
            t_theirs: list[float] = []
            t_ours: list[float] = []
            for _ in range(repeat):  # alternate, so drifting load hits both alike
                if theirs is not None:
                    t_theirs.append(timed(theirs, env))
                t_ours.append(timed(ours, env))
            ours_s = statistics.median(t_ours)
            if t_theirs:
                theirs_s = statistics.median(t_theirs)
                line = (f"| {label} | {theirs_s:.2f} s | {ours_s:.2f} s | "
                        f"{theirs_s / ours_s:.0f}x |")
            else:
                line = f"| {label} | (skipped) | {ours_s:.2f} s | - |"
            print(line, flush=True)
            lines.append(line)
        report = work / "report.html"
        t_report = [timed([str(BIN / "hpsearch"), "report", STUDY, "-o", str(report),
                           "--db", url], env) for _ in range(repeat)]
        size = report.stat().st_size / 2**20
        line = (f"| `hpsearch report` | - | {statistics.median(t_report):.2f} s, "
                f"{size:.1f} MB | limit 50 MB: {'ok' if size < 50 else 'TOO BIG'} |")
        print(line, flush=True)
        lines.append(line)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=3, help="rounds; medians are shown")
    parser.add_argument("--pg", metavar="URL", help="also run on this PostgreSQL database "
                        "(a throwaway one: the study is written into it)")
    parser.add_argument("--skip-sqlite", action="store_true", help="only the --pg run")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    targets = [] if args.skip_sqlite else [("sqlite", f"sqlite:///{RESULTS / 'queries.db'}")]
    if args.pg:
        targets.append(("postgresql", args.pg))
    for backend, url in targets:
        print(f"== {backend}: {args.trials:,} trials x {args.epochs} epochs", flush=True)
        build(url, args.trials, args.epochs)
        lines = measure(url, args.repeat)
        note = (f"{backend}, {args.trials:,} trials x {args.epochs} epochs, whole processes, "
                f"median of {args.repeat}, {datetime.now(UTC):%Y-%m-%d}, "
                f"{os.cpu_count()} cores, optuna {optuna.__version__}")
        (RESULTS / f"queries-{backend}.md").write_text("\n".join([note, "", *lines]) + "\n")


if __name__ == "__main__":
    main()
