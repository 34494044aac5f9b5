"""EMA of weights: would it buy validation accuracy as a trainer option? A paired measure.

An exponential moving average never changes the training itself (the optimiser steps the same
weights whether or not an average is kept), so one run per (schedule, seed) gives every decay at
once: the trained weights and one torch `AveragedModel` per decay, each updated after every step,
all scored on the same validation split after every epoch. The result decided against the
option (docs/BENCHMARKS.md, "EMA of weights"). The configuration is the hand-tuned
reproduction's (1 Mixer block, Adam lr 1e-3, Xavier init, batch 256, fp32) on a subset of
Fashion-MNIST, under a constant rate (the hand-tuned run's first 25 epochs, before its plateau
cut) and under cosine (what searches mostly pick).

    .venv/bin/python bench/ema.py --subset 12000 --epochs 12 --seeds 0 1 -o bench/results/ema.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from hpsearch.params import DataOptions, TrialParams
from hpsearch.trainer.data import load_train_val
from hpsearch.trainer.loop import evaluate, fit

DECAYS = (0.99, 0.998, 0.999)
HAND_TUNED = {"patch_size": 4, "hidden_dim": 128, "token_mlp_dim": 64, "channel_mlp_dim": 512,
              "num_blocks": 1, "init": "xavier_uniform", "optimizer": "adam", "lr": 1e-3,
              "batch_size": 256, "precision": "fp32"}


def one_run(scheduler: str, seed: int, subset: int, epochs: int) -> dict:
    data = load_train_val(DataOptions(subset=subset), seed=0)
    params = TrialParams(**HAND_TUNED, scheduler=scheduler, epochs=epochs)
    run = fit(params, data, seed=seed, device="cpu")
    averages = {d: AveragedModel(run.trained, multi_avg_fn=get_ema_multi_avg_fn(d),
                                 use_buffers=True) for d in DECAYS}
    run.on_step = lambda _done, _total: [a.update_parameters(run.trained)
                                         for a in averages.values()]
    curves: dict[str, list[float]] = {"none": [], **{str(d): [] for d in DECAYS}}
    started = time.perf_counter()
    for metrics in run:
        curves["none"].append(metrics.val_acc)
        for decay, average in averages.items():
            curves[str(decay)].append(evaluate(average.module, data.val, run.device, None)[1])
        print(f"{scheduler} seed {seed} epoch {metrics.epoch}: "
              + "  ".join(f"{k} {v[-1]:.4f}" for k, v in curves.items()), flush=True)
    return {"scheduler": scheduler, "seed": seed, "subset": subset, "epochs": epochs,
            "val_images": len(data.val), "seconds": time.perf_counter() - started,
            "val_acc": curves}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subset", type=int, default=12000)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--schedulers", nargs="+", default=["none", "cosine"])
    parser.add_argument("-o", "--output", type=Path, default=Path("bench/results/ema.json"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    runs = []
    for scheduler in args.schedulers:
        for seed in args.seeds:
            runs.append(one_run(scheduler, seed, args.subset, args.epochs))
            args.output.write_text(json.dumps(runs, indent=1) + "\n")  # each run as it ends
    for scheduler in args.schedulers:
        mine = [r for r in runs if r["scheduler"] == scheduler]
        for key in mine[0]["val_acc"]:
            best = [max(r["val_acc"][key]) for r in mine]
            last = [r["val_acc"][key][-1] for r in mine]
            print(f"{scheduler:7s} ema {key:6s}: best val acc {sum(best) / len(best):.4f}, "
                  f"last epoch {sum(last) / len(last):.4f} (mean of {len(mine)} seeds)")


if __name__ == "__main__":
    main()
