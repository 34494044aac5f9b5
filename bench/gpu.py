"""GPU figures (run by bench/gpu.sh): epoch time of the reference Mixer, and trials per hour
with 1, 4 and 8 workers sharing one GPU.

    python bench/gpu.py epochs [--device cuda] [--subset N] [--blocks 1,4]
    python bench/gpu.py trials [--workers 1,4,8] [--trials-per-worker 2] [--epochs 2]
    python bench/gpu.py ... --tiny      # a smoke run on the CPU: tiny data, seconds

`epochs`: one timed epoch (after one untimed warm-up epoch) over the training set plus one pass
over the test set, reference Mixer (patch 4, hidden 128, token 64, channel 512, batch 256, Adam
1e-3), 1 and 4 blocks: (a) the coursework loop (torchvision FashionMNIST + ToTensor +
DataLoader, each batch moved to the device), (b) hpsearch's trainer with its defaults (dataset
on the device for the whole run, precision and compile "auto"). Real Fashion-MNIST when it is
installed, else random images of the same shape written in its file format (the time of an
epoch does not depend on the pixels).

`trials`: `hpsearch run --gpus 0 --workers-per-gpu K --workers K` on a small real study (1-block
Mixers, lr and width searched, synthetic 60,000-image dataset), K × --trials-per-worker trials;
finished trials per hour of wall time, launch to exit.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"


Tensors = tuple[torch.Tensor, torch.Tensor]


def write_idx(root: Path, subset: int | None) -> tuple[Tensors, Tensors]:
    """Fashion-MNIST (or random images of its shape) written as torchvision's uncompressed raw
    files under `root`, for the coursework loop; returns the same (train, test) tensors."""
    from hpsearch.trainer.data import DataNotFoundError, load_raw, synthetic_raw

    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    splits = []
    for train, prefix in ((True, "train"), (False, "t10k")):
        try:
            images, labels = load_raw("fashion-mnist", None, train=train, download=False)
        except DataNotFoundError:
            images, labels = synthetic_raw(60_000 if train else 10_000, seed=int(train))
        n = (subset if train else max(256, subset // 6)) if subset else len(labels)
        images, labels = images[:n].reshape(-1, 28, 28), labels[:n]
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            struct.pack(">IIII", 2051, len(labels), 28, 28) + images.numpy().tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
            struct.pack(">II", 2049, len(labels)) + labels.to(torch.uint8).numpy().tobytes())
        splits.append((images.reshape(-1, 1, 28, 28), labels))
    return splits[0], splits[1]


def coursework_epochs(root: Path, blocks: int, device: str) -> float:
    """The coursework loop, as a notebook writes it; seconds of its second epoch."""
    import torch
    from torch import nn
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    from hpsearch.trainer.model import MLPMixer

    transform = transforms.ToTensor()
    train_loader = DataLoader(datasets.FashionMNIST(str(root), train=True, transform=transform),
                              batch_size=256, shuffle=True)
    test_loader = DataLoader(datasets.FashionMNIST(str(root), train=False, transform=transform),
                             batch_size=256)
    model = MLPMixer((1, 28, 28), patch_size=4, hidden_dim=128, token_mlp_dim=64,
                     channel_mlp_dim=512, num_blocks=blocks, dropout=0.0,
                     activation="gelu").to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = nn.CrossEntropyLoss()
    seconds = 0.0
    for _ in range(2):  # the first epoch warms up CUDA and cuDNN
        started = time.perf_counter()
        model.train()
        for images, labels in train_loader:
            images, labels = images.to(device), labels.to(device)
            optimizer.zero_grad()
            loss = criterion(model(images), labels)
            loss.backward()
            optimizer.step()
            loss.item()  # as the coursework loop does, for its running loss
        model.eval()
        with torch.no_grad():
            for images, labels in test_loader:
                (model(images.to(device)).argmax(1) == labels.to(device)).sum().item()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
    return seconds


def trainer_epochs(train_split: Tensors, test_split: Tensors, blocks: int,
                   device: str) -> tuple[float, str | None]:
    """hpsearch's trainer with its defaults: seconds of its second epoch (the first compiles,
    measures precision, warms up) and the precision it chose."""
    from hpsearch.params import TrialParams
    from hpsearch.trainer.data import Split, TrainValData
    from hpsearch.trainer.loop import fit

    mean, std = 0.286, 0.353  # Fashion-MNIST's; only scales the inputs

    def split(tensors: Tensors) -> Split:
        return Split((tensors[0].float() / 255 - mean) / std, tensors[1].long())

    data = TrainValData(train=split(train_split), val=split(test_split),
                        dataset="fashion-mnist", mean=mean, std=std)
    params = TrialParams(model="mixer", patch_size=4, hidden_dim=128, token_mlp_dim=64,
                         channel_mlp_dim=512, num_blocks=blocks, batch_size=256,
                         optimizer="adam", lr=1e-3, epochs=2)
    result = fit(params, data, seed=0, device=device).run_to_end()
    return result.history[-1].seconds, result.setup.precision if result.setup else None


def run_epochs(args: argparse.Namespace) -> dict[str, object]:
    root = Path(tempfile.mkdtemp(prefix="hps-gpu-data-"))
    train_split, test_split = write_idx(root, args.subset)
    out: dict[str, object] = {}
    for blocks in [int(b) for b in args.blocks.split(",")]:
        course = coursework_epochs(root, blocks, args.device)
        ours, precision = trainer_epochs(train_split, test_split, blocks, args.device)
        out[f"{blocks}_block"] = {"coursework_s": round(course, 2), "hpsearch_s": round(ours, 2),
                                  "hpsearch_precision": precision,
                                  "speed_up": round(course / ours, 2)}
        print(f"{blocks} block(s): coursework {course:.2f} s/epoch, hpsearch {ours:.2f} "
              f"s/epoch ({precision}): {course / ours:.1f}x", flush=True)
    return out


def study_file(folder: Path, name: str, trials: int, epochs: int, size: int) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(f"""
[study]
name = "{name}"
sampler = "tpe"
pruner = "none"
n_trials = {trials}

[data]
dataset = "synthetic"
synthetic_size = {size}

[budget]
max_epochs = {epochs}

[workers]
checkpoint_dir = "{folder / 'checkpoints'}"

[space]
patch_size = 4
hidden_dim = [64, 128]
token_mlp_dim = 64
channel_mlp_dim = 512
num_blocks = 1
lr = {{ low = 3e-4, high = 3e-3, log = true }}
batch_size = 256
""")
    return path


def run_trials(args: argparse.Namespace) -> dict[str, object]:
    folder = Path(tempfile.mkdtemp(prefix="hps-gpu-trials-"))
    out: dict[str, object] = {}
    for k in [int(w) for w in args.workers.split(",")]:
        trials = k * args.trials_per_worker
        path = study_file(folder, f"gpu-{k}", trials, args.epochs, args.size)
        gpu = ["--gpus", "0", "--workers-per-gpu", str(k)] if args.device == "cuda" else []
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "hpsearch", "run", str(path), "--db",
                               f"sqlite:///{folder / f'gpu-{k}.db'}", "--workers", str(k),
                               "--threads", "1", "--log-dir", str(folder / "logs"), "--top",
                               "0", "--device", args.device, *gpu],
                              cwd=ROOT, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        wall = time.monotonic() - started
        if done.returncode:
            raise SystemExit(f"hpsearch run failed ({k} workers):\n{done.stdout}{done.stderr}")
        out[f"{k}_workers"] = {"trials": trials, "wall_s": round(wall, 1),
                               "trials_per_hour": round(trials / wall * 3600)}
        print(f"{k} worker(s) on one {args.device}: {trials} trials in {wall:.0f} s = "
              f"{trials / wall * 3600:.0f} trials/hour", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("part", choices=("epochs", "trials"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--subset", type=int, default=None, help="training images (epochs)")
    parser.add_argument("--blocks", default="1,4")
    parser.add_argument("--workers", default="1,4,8")
    parser.add_argument("--trials-per-worker", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--size", type=int, default=60_000, help="synthetic images (trials)")
    parser.add_argument("--tiny", action="store_true", help="CPU smoke run on tiny data")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.tiny:
        args.device, args.subset, args.blocks = "cpu", 512, "1"
        args.workers, args.trials_per_worker, args.epochs, args.size = "1,2", 1, 1, 300
    results = {"when": datetime.now(UTC).isoformat(timespec="seconds"), "device": args.device,
               "part": args.part,
               **(run_epochs(args) if args.part == "epochs" else run_trials(args))}
    if not args.tiny:
        out = args.out or RESULTS / f"gpu-{args.part}.json"
        out.write_text(json.dumps(results, indent=1) + "\n")
        print(f"written to {out}")


if __name__ == "__main__":
    main()
