"""What dropout costs a Mixer training step on the CPU: none, nn.Dropout, hpsearch's Dropout.

Same model (patch 4, hidden 160, token 128, channel 512, 3 blocks, GELU), batch 256, bf16
autocast, fused AdamW, one thread, random data already in memory (no augmentation), so only the
dropout layers differ. Each way is timed in turn for several rounds; the figure is the median
images/s over the rounds. Results: stdout and bench/results/dropout.json.

    python bench/dropout.py [--rounds 5] [--steps 10] [--threads 1] [--p 0.1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hpsearch.params import TrialParams  # noqa: E402
from hpsearch.trainer.model import Dropout, build_model  # noqa: E402

BATCH = 256
MODEL = dict(patch_size=4, hidden_dim=160, token_mlp_dim=128, channel_mlp_dim=512, num_blocks=3)


def make_step(p: float, dropout_layer: type[nn.Module] | None) -> Callable[[], None]:
    """A training step of the model; `dropout_layer` replaces hpsearch's Dropout (None: p=0)."""
    torch.manual_seed(0)
    model = build_model(TrialParams(**MODEL, dropout=p if dropout_layer else 0.0), (1, 28, 28))
    if dropout_layer is nn.Dropout:
        for parent in model.modules():
            for name, child in parent.named_children():
                if isinstance(child, Dropout):
                    setattr(parent, name, nn.Dropout(p))
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    images, labels = torch.randn(BATCH, 1, 28, 28), torch.randint(0, 10, (BATCH,))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = nn.functional.cross_entropy(model(images), labels)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()

    return step


def images_per_s(step: Callable[[], None], steps: int) -> float:
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * BATCH / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--p", type=float, default=0.1, help="dropout probability")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "dropout.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    ways = {"no dropout": make_step(args.p, None),
            f"nn.Dropout({args.p})": make_step(args.p, nn.Dropout),
            f"hpsearch Dropout({args.p})": make_step(args.p, Dropout)}
    for step in ways.values():  # warm-up: allocator, kernels
        for _ in range(3):
            step()
    rates: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.rounds):
        for name, step in ways.items():
            rates[name].append(images_per_s(step, args.steps))
    medians = {name: statistics.median(values) for name, values in rates.items()}
    for name, rate in medians.items():
        rounds = ", ".join(f"{r:.0f}" for r in rates[name])
        print(f"{name:28s} {rate:8.0f} img/s  (rounds: {rounds})")
    names = list(ways)
    print(f"hpsearch's dropout vs nn.Dropout: {medians[names[2]] / medians[names[1]]:.2f}x faster; "
          f"dropout's cost over none: {medians[names[0]] / medians[names[1]]:.2f}x (nn) -> "
          f"{medians[names[0]] / medians[names[2]]:.2f}x (hpsearch)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": MODEL, "batch": BATCH, "threads": args.threads,
                                    "p": args.p, "img_per_s": rates, "median": medians}, indent=2))


if __name__ == "__main__":
    main()
