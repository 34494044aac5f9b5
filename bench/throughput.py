"""Trainer throughput: the coursework loop vs `hpsearch.trainer.loop.fit`, same model, same run.

Seconds per epoch on the FULL Fashion-MNIST training set (60,000 images) plus one evaluation
pass over the 10,000 test images (both loops evaluate once per epoch, as a notebook would),
batch 256, Adam lr 1e-3, MLP-Mixer patch 4 / hidden 128 / token 64 / channel 512, 1 and 4 blocks:

  (a) coursework: torchvision FashionMNIST + ToTensor() + DataLoader(shuffle=True), fp32, and
      the Mixer as a notebook writes it (throughput_workers.NotebookMixer), inline;
  (b) our trainer, precision="fp32";
  (c) our trainer, precision="bf16" (autocast);
  (d) our trainer with its automatic defaults (precision="auto": whichever of fp32 and bf16
      hpsearch.trainer.runtime measured to be faster on this machine; compile="off" is the default);
  (e) only with --compile: (d) with compile="on", compile time counted in the epoch (the
      worker starts with an empty compile cache, so this is a cold compile);
  (m) the matrix products of a training step alone, in fp32 and in bf16: every product the
      step does (forward, weight and input gradients), the same shapes, threads and turns.

"% of the matmul rate" is a way's training FLOP/s (the step's matmul FLOPs, counted product by
product, x images/s) as a share of (m)'s in its precision: how close the step comes to a step
whose other work is free. (m)'s rate is that of its fastest turn, so a trainer cannot pass it
by running in a quieter moment, in short runs too. A large square torch.matmul's rate (what
issue 27 compared with) is timed between rounds, outside the turns, and only printed beside.

How it is timed, on a machine that other people use at the same time: every way runs in its own
worker process, and the workers take turns in slices of about --slice seconds, so a slow stretch
of the machine hits every way alike (throughput_workers). Rounds repeat this with fresh models;
the table shows the median over rounds.

Also: validation accuracy after 5 epochs of the 1-block model, fp32 vs default precision (same
seed, no augmentation, the usual 54k/6k train/validation split, both runs interleaved in the same
way). `--profile` instead prints where a training step's time goes, op by op
(throughput_profile).

    .venv/bin/python bench/throughput.py             # ~15 min on 2 idle cores (fast bf16)
    .venv/bin/python bench/throughput.py --quick     # smoke test on 4096 images, ~2 min
    .venv/bin/python bench/throughput.py --profile   # top ops per precision, 1 and 4 blocks
    .venv/bin/python bench/throughput.py --subset 1024 --rounds 2 --rounds-4 1 --acc-epochs 1
        # where bf16 is slow (a bf16 epoch costs 5-10x an fp32 one): 15 min on 2 busy cores
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from throughput_profile import profile_steps
from throughput_workers import (
    BATCH,
    IMAGE_SHAPE,
    log,
    mixer_params,
    run_interleaved,
    user_environment,
)

from hpsearch import OPENMP_SETTINGS
from hpsearch.paths import cache_dir
from hpsearch.trainer.data_files import candidate_dirs, find_idx_files
from hpsearch.trainer.machine import cpu_info
from hpsearch.trainer.model import training_matmuls
from hpsearch.trainer.named_datasets import torchvision_root
from hpsearch.trainer.runtime import configure_threads, cpu_precision, resolve_precision

RESULTS = Path(__file__).resolve().parent / "results"
FULL_TRAIN = 60_000
WAYS = ("coursework", "coursework_hpsearch_omp", "trainer_fp32", "trainer_bf16", "trainer_default",
        "matmul_fp32", "matmul_bf16")


def training_flops_per_image(blocks: int) -> float:
    """Matmul FLOPs of one training step per image, product by product (forward, weight
    gradients, input gradients but the stem's)."""
    shapes = training_matmuls(mixer_params(blocks), IMAGE_SHAPE, BATCH)
    return sum(2 * m * k * n for m, k, n in shapes) / BATCH


def square_matmul_rate(dtype: torch.dtype, n_max: int, repeats: int = 5,
                       budget_s: float = 5.0) -> tuple[float, int]:
    """FLOP/s of an n x n x n torch.matmul in `dtype` (median of `repeats` after a warm-up) and
    the n used: n_max, or the largest power of two from 256 whose product is expected, from the
    median time of half its size, to take under `budget_s` (a 2048^3 bf16 matmul took ~60 s on
    an AVX2-only CPU, which has no bf16 kernels worth the name). Each doubling is decided from
    the size below, not from 256^3 alone: on a busy machine one 256^3 product once took as long
    as 800 of them do on an idle one, which kept a whole run's reference at that size."""
    def seconds(n: int) -> float:
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        torch.matmul(a, b)  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            torch.matmul(a, b)
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    n, took = 256, seconds(256)
    while n < n_max and 8 * took <= budget_s:
        n *= 2
        took = seconds(n)
    return 2 * n**3 / took, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 4096 training images, one round, 1-epoch accuracy "
                        "(options given explicitly win)")
    parser.add_argument("--subset", type=int, default=None,
                        help="time epochs of the first N training images (default: all 60,000)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds of the 1-block configs (default 3)")
    parser.add_argument("--rounds-4", type=int, default=None,
                        help="rounds of the 4-block configs (default 2)")
    parser.add_argument("--acc-epochs", type=int, default=None,
                        help="epochs of the accuracy comparison (default 5; 0 skips it)")
    parser.add_argument("--compile", action="store_true", help="also time compile='on'")
    parser.add_argument("--slice", type=float, default=2.0,
                        help="seconds per turn when the configurations take turns")
    parser.add_argument("--trainer-env", action="append", default=[], metavar="KEY=VALUE",
                        help="environment of the trainer workers (repeatable; KEY= unsets), "
                        "e.g. GOMP_SPINCOUNT= to measure without hpsearch's OpenMP setting "
                        "hpsearch sets for itself")
    parser.add_argument("--skip", action="append", default=[], metavar="WAY",
                        choices=WAYS, help="leave a way out of the timing (repeatable)")
    parser.add_argument("--profile", action="store_true",
                        help="only profile the trainer's training steps (fp32 and bf16, 1 and 4 "
                        "blocks) and print the top ops and their share of a step")
    parser.add_argument("--profile-steps", type=int, default=8,
                        help="steps profiled per model and precision (after a warm-up epoch)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "throughput.json")
    args = parser.parse_args()
    defaults = {"subset": 4096, "rounds": 1, "rounds_4": 1, "acc_epochs": 1} if args.quick \
        else {"subset": None, "rounds": 3, "rounds_4": 2, "acc_epochs": 5}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    subset = args.subset

    threads = configure_threads(args.threads)
    if args.profile:
        profile_steps(args.profile_steps, threads)
        return
    cpu = cpu_info()
    log(f"CPU {cpu.model!r}: " + ", ".join(
        f"{flag} {'yes' if has else 'no'}" for flag, has in cpu.relevant_flags.items()))
    # the trainer workers read this decision from the cache (same CPU, torch, threads)
    decision = cpu_precision()
    default_dtype = resolve_precision("auto", torch.device("cpu")).precision
    m = decision.measurement
    log(f"torch {torch.__version__}, {threads} threads, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}; probe: fp32 {1 / m.fp32_step_s:.1f} "
        f"steps/s, bf16 {1 / m.bf16_step_s:.1f} steps/s -> precision auto = {default_dtype} "
        f"({decision.reason}; {'cached' if decision.from_cache else 'measured now'})")
    folder = next(f for f in (find_idx_files("fashion-mnist", d)
                              for d in candidate_dirs("fashion-mnist", None)) if f is not None)
    tv_root = torchvision_root("fashion-mnist", folder, cache_dir() / "torchvision")
    common = {"threads": threads, "slice_s": args.slice, "subset": subset, "seed": args.seed,
              "tv_root": str(tv_root)}

    square: dict[str, list[float]] = {"fp32": [], "bf16": []}
    n_mm = 1024 if args.quick else 2048

    def measure_square_matmul() -> None:
        sizes = {}
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            rate, sizes[name] = square_matmul_rate(dtype, n_mm)
            square[name].append(rate)
        log(f"square matmul: fp32 {square['fp32'][-1] / 1e9:.1f} GFLOP/s ({sizes['fp32']}^3), "
            f"bf16 {square['bf16'][-1] / 1e9:.1f} GFLOP/s ({sizes['bf16']}^3)")

    trainer_env = {}
    for item in args.trainer_env:
        key, _, value = item.partition("=")
        trainer_env[key] = value or None

    def timing_jobs(blocks: int) -> dict[str, dict]:
        def trainer(**changes: object) -> dict:
            return {**common, "kind": "trainer", "split": "full", "blocks": blocks,
                    "env": dict(trainer_env),
                    "params": mixer_params(blocks, epochs=1, **changes).to_dict()}

        coursework = {**common, "kind": "coursework", "blocks": blocks}
        jobs = {"coursework": {**coursework,
                               "env": {k: user_environment(k) for k in OPENMP_SETTINGS}},
                # the same notebook loop with the OpenMP settings hpsearch makes for itself:
                # separates what those do on a shared machine from the trainer's code
                "coursework_hpsearch_omp": {**coursework, "env": dict(OPENMP_SETTINGS)},
                "trainer_fp32": trainer(precision="fp32"),
                "trainer_bf16": trainer(precision="bf16"),
                "trainer_default": trainer()}
        for precision in ("fp32", "bf16"):
            jobs[f"matmul_{precision}"] = {**common, "kind": "matmul", "blocks": blocks,
                                           "precision": precision,
                                           "images": subset or FULL_TRAIN}
        jobs = {name: job for name, job in jobs.items() if name not in args.skip}
        if args.compile:
            # an empty compile cache, so the epoch pays the full (cold) compile time
            cache = tempfile.mkdtemp(prefix="hpsearch-bench-inductor-")
            job = trainer(compile="on")
            job["env"]["TORCHINDUCTOR_CACHE_DIR"] = cache
            jobs["trainer_default_compile"] = job
        return jobs

    measure_square_matmul()
    runs: dict[str, dict[str, list[dict]]] = {}
    plan = [1] * args.rounds + [4] * args.rounds_4
    for i, blocks in enumerate(plan):
        jobs = timing_jobs(blocks)
        names = list(jobs)
        jobs = {n: jobs[n] for n in names[i % len(names):] + names[:i % len(names)]}
        results, others = run_interleaved(jobs)
        for job in jobs.values():
            cache = job.get("env", {}).get("TORCHINDUCTOR_CACHE_DIR")
            if cache:
                shutil.rmtree(cache, ignore_errors=True)
        for name, out in results.items():
            out["others_cores"] = others
            runs.setdefault(str(blocks), {}).setdefault(name, []).append(out)
        log(f"{blocks} block(s), round {plan[:i + 1].count(blocks)}: " + ", ".join(
            f"{n} {o['seconds']:.1f} s ({o['turns']} turns)" for n, o in results.items())
            + f"; other processes used {others:.2f} cores meanwhile")
        measure_square_matmul()

    # --- accuracy: 1 block, fp32 vs default precision, same seed, standard split ---
    acc_jobs = {name: {**common, "kind": "trainer", "split": "train_val", "blocks": 1,
                       "env": dict(trainer_env),
                       "params": mixer_params(1, epochs=args.acc_epochs, **changes).to_dict()}
                for name, changes in (("trainer_fp32", {"precision": "fp32"}),
                                      ("trainer_default", {}))} if args.acc_epochs else {}
    accuracy, acc_others = run_interleaved(acc_jobs) if acc_jobs else ({}, 0.0)
    for name, out in accuracy.items():
        log(f"accuracy {name}: val acc per epoch "
            + " ".join(f"{m['val_acc']:.4f}" for m in out["history"])
            + f"; {out['seconds']:.1f} s for {args.acc_epochs} epochs")
    measure_square_matmul()

    report = summarise(runs, square, accuracy, acc_others, threads, default_dtype, args)
    report["cpu"] = {"model": cpu.model, "flags": cpu.relevant_flags,
                     "probe": {"fp32_steps_per_s": 1 / m.fp32_step_s,
                               "bf16_steps_per_s": 1 / m.bf16_step_s,
                               "batch": m.batch, "reason": decision.reason}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    log(f"wrote {args.out}")
    print(report["summary_line"], flush=True)


def _median(outs: list[dict], key: str) -> float:
    return statistics.median(o[key] for o in outs)


def summarise(runs: dict, square: dict, accuracy: dict, acc_others: float, threads: int,
              default_dtype: str, args: argparse.Namespace) -> dict:
    sq = {k: max(v) for k, v in square.items()}  # best of the samples: the attainable rate
    table, ratios, omp_ratios, vs_best = [], {}, {}, {}
    for blocks, by_way in runs.items():
        flops_per_image = training_flops_per_image(int(blocks))
        # what the step's matmuls alone reached in each precision, in the same turns
        limit = {p: flops_per_image * _median(by_way[f"matmul_{p}"], "images_per_s")
                 for p in ("fp32", "bf16") if f"matmul_{p}" in by_way}
        base = _median(by_way["coursework"], "seconds") if "coursework" in by_way else None
        for name, outs in by_way.items():
            sec, ips = _median(outs, "seconds"), _median(outs, "images_per_s")
            dtype = outs[0].get("precision", "fp32")  # the coursework loop runs fp32
            achieved = flops_per_image * ips
            table.append({
                "blocks": int(blocks), "way": name, "precision": dtype, "rounds": len(outs),
                "seconds_per_epoch": sec,
                "all_seconds": [round(o["seconds"], 2) for o in outs],
                "train_seconds": _median(outs, "train_seconds"),
                "images_per_s": ips,
                "achieved_gflops": achieved / 1e9,
                "step_matmul_gflops": limit[dtype] / 1e9 if dtype in limit else None,
                "fraction_of_step_matmuls": achieved / limit[dtype] if dtype in limit else None,
                "square_matmul_gflops": sq[dtype] / 1e9,
                "fraction_of_square_matmul": achieved / sq[dtype],
                "speedup_vs_coursework": base / sec if base and "matmul" not in name else None,
                "others_cores": [round(o["others_cores"], 2) for o in outs],
                "openmp_env": outs[0]["openmp_env"],
            })
            if name == "trainer_default" and base:
                ratios[blocks] = base / sec
                if "coursework_hpsearch_omp" in by_way:
                    omp_ratios[blocks] = _median(by_way["coursework_hpsearch_omp"], "seconds") / sec
            if name == "trainer_default" and {"trainer_fp32", "trainer_bf16"} <= set(by_way):
                best = min(_median(by_way[n], "seconds") for n in ("trainer_fp32", "trainer_bf16"))
                vs_best[blocks] = sec / best  # target: <= 1.05

    def ratio_text(by_blocks: dict, form: str = "{:.1f}x") -> str:
        return ", ".join(f"{form.format(r)} ({b} block{'s' if b != '1' else ''})"
                         for b, r in by_blocks.items())

    shares = {str(r["blocks"]): r["fraction_of_step_matmuls"] for r in table
              if r["way"] == "trainer_default" and r["fraction_of_step_matmuls"] is not None}
    line = "defaults at " + ratio_text({b: 100 * f for b, f in shares.items()}, "{:.0f}%") \
        + " of the step's matmul rate"
    if ratios:
        line += "; speed-up vs coursework loop: " + ratio_text(ratios)
    if omp_ratios:
        line += f" (vs that loop with hpsearch's OpenMP settings: {ratio_text(omp_ratios)})"
    if vs_best:
        line += "; defaults vs the faster of fp32/bf16: " + ratio_text(vs_best, "{:.2f}x its time")
    report = {
        "command": "python bench/throughput.py " + " ".join(sys.argv[1:]),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "torch": torch.__version__, "python": platform.python_version(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": threads,
        "cpu_count": os.cpu_count(), "default_precision": default_dtype,
        "method": f"ways interleaved in turns of ~{args.slice} s, each in its own process; "
                  "epoch time = sum of its own turns; median over rounds",
        "timing_data": {"train_images": args.subset or FULL_TRAIN,
                        "eval_images": max(256, args.subset // 6) if args.subset else 10000,
                        "note": "each epoch also evaluates (part of) the test set once"},
        "square_matmul_gflops": {k: v / 1e9 for k, v in sq.items()},
        "square_matmul_all_gflops": {k: [round(x / 1e9, 1) for x in v]
                                     for k, v in square.items()},
        "table": table,
        "share_of_step_matmul_rate": shares,
        "speedup_vs_coursework": ratios,
        "default_time_vs_best_precision": vs_best,
        "speedup_vs_coursework_hpsearch_omp": omp_ratios,
        "summary_line": line,
    }
    if accuracy:
        fp32_acc = accuracy["trainer_fp32"]["history"][-1]["val_acc"]
        default_acc = accuracy["trainer_default"]["history"][-1]["val_acc"]
        report["accuracy"] = {
            "epochs": args.acc_epochs, "split": "load_train_val, val_fraction 0.1, seed "
            f"{args.seed}", "fp32_val_acc": fp32_acc, "default_val_acc": default_acc,
            "difference_points": 100 * (default_acc - fp32_acc),
            "fp32_seconds": accuracy["trainer_fp32"]["seconds"],
            "default_seconds": accuracy["trainer_default"]["seconds"],
            "others_cores": acc_others,
            "history": {k: v["history"] for k, v in accuracy.items()},
        }
    return report


def print_table(report: dict) -> None:
    print()
    data = report["timing_data"]
    print(f"s/epoch: {data['train_images']:,} training images + {data['eval_images']:,} "
          "evaluation images, median over rounds; img/s and GFLOP/s: training steps only;\n"
          "% step mm: of the step's own matmuls alone (same precision, shapes, threads, turns)")
    print(f"{'blocks':>6} {'way':<24} {'prec':<5} {'s/epoch':>8} {'rounds':>6} {'img/s':>7} "
          f"{'GFLOP/s':>8} {'% step mm':>9} {'speed-up':>8}")

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}%"

    for r in report["table"]:
        up = r["speedup_vs_coursework"]
        print(f"{r['blocks']:>6} {r['way']:<24} {r['precision']:<5} "
              f"{r['seconds_per_epoch']:>8.1f} {r['rounds']:>6} {r['images_per_s']:>7,.0f} "
              f"{r['achieved_gflops']:>8.1f} {pct(r['fraction_of_step_matmuls']):>9} "
              f"{'-' if up is None else f'{up:.2f}x':>8}")
    sq = report["square_matmul_gflops"]
    # timed between rounds, outside the turns: a reference, not the limit the shares are of
    print(f"square matmul (best in this run, between rounds): fp32 {sq['fp32']:.0f} GFLOP/s, "
          f"bf16 {sq['bf16']:.0f} GFLOP/s")
    acc = report.get("accuracy")
    if acc:
        print(f"val acc after {acc['epochs']} epochs (1 block, seed 0, no augmentation): fp32 "
              f"{100 * acc['fp32_val_acc']:.2f}%, default ({report['default_precision']}) "
              f"{100 * acc['default_val_acc']:.2f}%, difference {acc['difference_points']:+.2f} "
              f"points; {acc['fp32_seconds']:.0f} s vs {acc['default_seconds']:.0f} s")


if __name__ == "__main__":
    main()
