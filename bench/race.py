"""The race (issue 23 item 6): the same hours for every way a user could spend them.

Arms, each given the same wall-clock budget, its final model and its one test pass included:
  hand      (a) the coursework's best hand-tuned configuration (1 block, Xavier, Adam lr 1e-3,
                plateau), trained for as long as the budget allows, best validation epoch scored
  optuna    (b) plain Optuna as its docs show it: TPE + MedianPruner, epochs as the only
                fidelity, the best trial retrained on train + validation and scored
  asha      (c) random search + ASHA (Optuna's SuccessiveHalvingPruner over epochs), the same
  hpsearch  (d) hpsearch's recommended setting through its CLI (bench/race_hpsearch.py):
                `hpsearch run` with rungs and a search timeout, then `hpsearch evaluate`
  hpsearch-hours  (d) the same with the hours budget instead: `hpsearch run --hours`
  hpsearch-ensemble  (d) `hpsearch run --hours` with `[budget] final = {ensemble = 2}`: the two
                best configurations retrained inside the same hours, their ensemble scored
  hpsearch-epochs  (d) `hpsearch run --hours` with epochs as the only fidelity (successive
                halving over epochs 1, 3, 9, 27 of the whole split) instead of data-fraction rungs
  hpsearch-epochs-ensemble  (d) the same with `[budget] final = {ensemble = 2}`
(b)-(d) search the same space (bench/race_arms.py, space_params). (a)-(c) train with hpsearch's
trainer as a library, so the race compares how the hours are spent, not trainers. Every choice
is made on the validation split; the test set is read once per arm and seed, at the end.

Each arm×seed runs in its own process (and session: Linux shares the CPU between sessions
first, then between the processes of one) with one thread; --parallel of them at a time, the
arms of one seed together, so that they share the machine's load alike.
Its result (curve of validation accuracies against seconds, test accuracy, budget used, CPU
seconds) goes to RESULTS/ARM-seed-S.json when it finishes, and the figure, the raw-curves JSON
and the table in docs/BENCHMARKS.md are rewritten; a rerun skips finished arm×seed runs.

    python bench/race.py --size quick                       # every arm, 2 seeds, 20 min each
    python bench/race.py --size quick --arms hand,optuna,asha --minutes 12
    python bench/race.py --size quick --report-only         # redraw from what RESULTS holds

Sizes: quick = a fixed 12,000-image subset of the training set (10,800 train / 1,200 validation
per seed; final models on all 12,000), 2 seeds, 20 minutes per arm, trials of up to 40 epochs
(with one core an epoch of 10,800 images takes 4-8 s: a 10-epoch top rung would spend the
hours on models that stop long before they converge);
full = all 60,000 images, 3 seeds, 2.5 hours per arm, trials of up to 27 epochs (the hand-tuned
run peaks at epoch 25; successive halving's rungs at 1, 3, 9, 27 epochs); hpsearch's final
model retrained with 3 seeds inside its hours (`[budget] final = {seeds = 3}`), the mean of
their 3 test accuracies scored.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import struct
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
ARM_ORDER = ("hand", "optuna", "asha", "hpsearch", "hpsearch-hours", "hpsearch-ensemble",
             "hpsearch-epochs", "hpsearch-epochs-ensemble")
SUBSET_SEED = 1234  # which training images make up a subset: fixed, the same for every arm


@dataclass(frozen=True)
class Size:
    images: int | None  # training images the race may use (None: all 60,000)
    minutes: float
    seeds: int
    epochs: int  # the longest trial of the searching arms
    final_seeds: int = 1  # hpsearch's final model retrained with this many seeds (mean scored)


# smoke: a check that every arm runs end to end (a couple of minutes), not a result
SIZES = {"quick": Size(12_000, 20.0, 2, 40), "full": Size(None, 150.0, 3, 27, final_seeds=3),
         "smoke": Size(2_000, 1.5, 1, 3)}


def results_dir(size: str) -> Path:
    return HERE / "results" / "race" / size


def result_path(folder: Path, arm: str, seed: int) -> Path:
    return folder / f"{arm}-seed-{seed}.json"


def subset_folder(images: int | None) -> str | None:
    """A folder holding Fashion-MNIST with only `images` training images (the test set whole),
    in the four-file format hpsearch reads, so that every arm, the CLI's final retraining on
    'the whole training set' included, sees the same data. None: the installed dataset."""
    if images is None:
        return None
    from hpsearch.paths import cache_dir
    from hpsearch.trainer.data import load_raw

    folder = cache_dir() / "race" / f"fashion-mnist-{images}"
    if (folder / "t10k-labels-idx1-ubyte.gz").exists():
        return str(folder)
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    for train, prefix in ((True, "train"), (False, "t10k")):
        pixels, labels = load_raw("fashion-mnist", None, train=train)
        if train:
            keep = torch.randperm(len(labels), generator=torch.Generator().manual_seed(
                SUBSET_SEED))[:images]
            pixels, labels = pixels[keep], labels[keep]
        n = len(labels)
        with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as out:
            out.write(struct.pack(">iiii", 2051, n, 28, 28) + pixels.numpy().tobytes())
        with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as out:
            out.write(struct.pack(">ii", 2049, n) + labels.to(torch.uint8).numpy().tobytes())
    return str(folder)


def checkout_commit() -> str:
    """The commit the race runs from: a git checkout's HEAD, or the COMMIT file of an exported
    copy (a race runs from a frozen copy, so that work landing meanwhile does not change it)."""
    marker = REPO / "COMMIT"
    if marker.exists():
        return marker.read_text().strip()
    return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=False).stdout.strip()


def run_one(size_name: str, arm: str, seed: int, minutes: float, folder: Path) -> None:
    """One arm×seed in this process (one thread), its result written when it is done."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from race_arms import ARMS, Clock

    from hpsearch.params import DataOptions
    from hpsearch.trainer.runtime import configure_threads

    size = SIZES[size_name]
    configure_threads(1)
    clock = Clock(minutes * 60)  # started before the data is read: loading counts too
    started_at = time.time()
    options = DataOptions(dataset="fashion-mnist", data_dir=subset_folder(size.images),
                          val_fraction=0.1)
    if arm.startswith("hpsearch"):
        from race_hpsearch import hpsearch_arm

        result = hpsearch_arm(options, seed, clock, size.epochs, folder,
                              hours=arm != "hpsearch",
                              ensemble=2 if arm.endswith("-ensemble") else 1,
                              rungs=not arm.startswith("hpsearch-epochs"),
                              final_seeds=size.final_seeds)
        cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    else:
        result = ARMS[arm](options, seed, clock, size.epochs)
        cpu = resource.getrusage(resource.RUSAGE_SELF)
    record = {"arm": arm, "seed": seed, "size": size_name, "budget_s": clock.budget_s,
              "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started_at)),
              "cpu_s": cpu.ru_utime + cpu.ru_stime, "commit": checkout_commit(),
              **asdict(result)}
    path = result_path(folder, arm, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path)


def drive(size_name: str, arms: list[str], seeds: list[int], minutes: float, parallel: int,
          folder: Path) -> None:
    """Run the unfinished arm×seed pairs, `parallel` processes at a time, seed by seed (so
    the arms of a seed run together), redrawing the results as each finishes."""
    todo = [(arm, seed) for seed in seeds for arm in arms
            if not result_path(folder, arm, seed).exists()]
    subset_folder(SIZES[size_name].images)  # built once, before the arms start
    running: list[tuple[subprocess.Popen, str, int]] = []
    logs = folder / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    while todo or running:
        while todo and len(running) < parallel:
            arm, seed = todo.pop(0)
            command = [sys.executable, str(Path(__file__)), "--size", size_name, "--one", arm,
                       "--seed", str(seed), "--minutes", str(minutes), "--results", str(folder)]
            with open(logs / f"{arm}-seed-{seed}.log", "w") as log:  # the child keeps its copy
                proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                        env={**os.environ, "OMP_NUM_THREADS": "1"},
                                        start_new_session=True)
            running.append((proc, arm, seed))
            print(f"{time.strftime('%H:%M:%S')} started {arm} seed {seed}", flush=True)
        time.sleep(5)
        for entry in list(running):
            proc, arm, seed = entry
            if proc.poll() is not None:
                running.remove(entry)
                print(f"{time.strftime('%H:%M:%S')} {arm} seed {seed} exited {proc.returncode}",
                      flush=True)
                # in a process of its own: the report code may change while a race runs
                subprocess.run([sys.executable, str(Path(__file__)), "--size", size_name,
                                "--report-only", "--results", str(folder)], check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="quick")
    parser.add_argument("--arms", default=",".join(ARM_ORDER),
                        help=f"comma-separated, from {', '.join(ARM_ORDER)}")
    parser.add_argument("--seeds", type=int, help="seeds 0..N-1 (default: the size's)")
    parser.add_argument("--minutes", type=float, help="budget per arm (default: the size's)")
    parser.add_argument("--parallel", type=int, default=2, help="arm×seed runs at a time")
    parser.add_argument("--results", type=Path, help="default: bench/results/race/SIZE")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--one", choices=ARM_ORDER, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = SIZES[args.size]
    folder = args.results or results_dir(args.size)
    minutes = args.minutes or size.minutes
    if args.one:
        run_one(args.size, args.one, args.seed, minutes, folder)
    elif args.report_only:
        from race_report import write_all

        write_all(folder, args.size)
    else:
        arms = args.arms.split(",")
        unknown = sorted(set(arms) - set(ARM_ORDER))
        if unknown:
            parser.error(f"unknown arm(s): {', '.join(unknown)}")
        drive(args.size, arms, list(range(args.seeds or size.seeds)), minutes,
              args.parallel, folder)


if __name__ == "__main__":
    main()
