"""bench/throughput.py's ways and the turn-taking that times them side by side.

Every way (the coursework loop, the trainer in some precision, the bare matrix products of a
training step) runs in its own worker process; the workers take turns in slices of about
`slice_s` seconds (one runs, the others wait blocked on a pipe), so a slow stretch of a shared
machine hits every way alike. A way's time is the sum of its own slices.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from hpsearch import OPENMP_SETTINGS
from hpsearch.params import DataOptions, TrialParams
from hpsearch.trainer.data import (
    Split,
    TrainValData,
    load_full_train,
    load_test_split,
    load_train_val,
)
from hpsearch.trainer.loop import fit
from hpsearch.trainer.model import training_matmuls
from hpsearch.trainer.runtime import configure_threads

IMAGE_SHAPE = (1, 28, 28)
BATCH = 256
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.2f}] {msg}", flush=True)


def user_environment(name: str) -> str | None:
    """`name` as this process was started with it. Importing hpsearch sets its OpenMP settings
    (hpsearch.OPENMP_SETTINGS) for its own processes; the coursework loop must run with the
    user's own settings, as a notebook would."""
    try:
        with open("/proc/self/environ", "rb") as f:
            for entry in f.read().split(b"\0"):
                key, _, value = entry.partition(b"=")
                if key.decode(errors="replace") == name:
                    return value.decode(errors="replace")
        return None
    except OSError:  # not Linux
        return os.environ.get(name)


def mixer_params(blocks: int, **changes: object) -> TrialParams:
    return TrialParams(model="mixer", patch_size=4, hidden_dim=128, token_mlp_dim=64,
                       channel_mlp_dim=512, num_blocks=blocks, batch_size=BATCH,
                       optimizer="adam", lr=1e-3, augment=False).replace(**changes)


class OthersMeter:
    """CPU time used by OTHER processes (in cores, averaged) since creation: /proc/stat's busy
    time minus the CPU time of this process and of the given worker processes."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = [os.getpid(), *pids]
        self.begin = self._sample()

    def _sample(self) -> tuple[float, float, float]:
        tick = os.sysconf("SC_CLK_TCK")
        try:
            with open("/proc/stat") as f:
                ticks = [int(v) for v in f.readline().split()[1:9]]
            busy = (sum(ticks) - ticks[3] - ticks[4]) / tick
            ours = 0.0
            for pid in self.pids:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                ours += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        except OSError:  # not Linux: report no contention rather than fail
            busy = ours = 0.0
        return busy, ours, time.monotonic()

    def others(self) -> float:
        end = self._sample()
        wall = max(1e-9, end[2] - self.begin[2])
        return max(0.0, (end[0] - self.begin[0]) - (end[1] - self.begin[1])) / wall


class Turns:
    """A worker's side of the turn-taking: `tick()` after every training step hands the CPU back
    once this turn has lasted `slice_s`; only time inside turns is counted."""

    def __init__(self, conn, slice_s: float) -> None:
        self.conn, self.slice_s = conn, slice_s
        self.counted = 0.0
        self.turns = 0
        self.turn_started = 0.0

    def wait(self) -> None:
        if self.conn.recv() != "go":
            raise SystemExit(0)
        self.turns += 1
        self.turn_started = time.perf_counter()

    def tick(self) -> None:
        now = time.perf_counter()
        if now - self.turn_started >= self.slice_s:
            self.counted += now - self.turn_started
            self.conn.send(("paused", None))
            self.wait()

    def elapsed(self) -> float:
        """Counted time so far, including the current turn."""
        return self.counted + time.perf_counter() - self.turn_started


# ---------------------------------------------------------------------------------------------
# the coursework loop, as written in a notebook (plus turns.tick() for the timing)
# ---------------------------------------------------------------------------------------------

class NotebookMixer(nn.Module):
    """The MLP-Mixer as a notebook writes it: (batch, patches, dim), token mixing on transposed
    copies. Layers are made in hpsearch's order, so a seed gives both the same weights."""

    def __init__(self, blocks: int, patch: int = 4, dim: int = 128, token: int = 64,
                 channel: int = 512) -> None:
        super().__init__()
        self.patch, patches = patch, (28 // patch) ** 2
        self.stem = nn.Linear(patch * patch, dim)
        self.blocks = nn.ModuleList(nn.ModuleDict({
            "token_norm": nn.LayerNorm(dim),
            "token_mlp": nn.Sequential(nn.Linear(patches, token), nn.GELU(),
                                       nn.Linear(token, patches)),
            "channel_norm": nn.LayerNorm(dim),
            "channel_mlp": nn.Sequential(nn.Linear(dim, channel), nn.GELU(),
                                         nn.Linear(channel, dim)),
        }) for _ in range(blocks))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        b, p = images.shape[0], self.patch
        x = images.reshape(b, 1, 28 // p, p, 28 // p, p).permute(0, 2, 4, 1, 3, 5)
        x = self.stem(x.reshape(b, -1, p * p))
        for blk in self.blocks:
            x = x + blk["token_mlp"](blk["token_norm"](x).transpose(1, 2)).transpose(1, 2)
            x = x + blk["channel_mlp"](blk["channel_norm"](x))
        return self.head(self.norm(x).mean(dim=1))


def coursework_epoch(turns: Turns, blocks: int, root: Path, subset: int | None,
                     seed: int) -> dict:
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    transform = transforms.ToTensor()
    train_set = datasets.FashionMNIST(str(root), train=True, transform=transform, download=False)
    test_set = datasets.FashionMNIST(str(root), train=False, transform=transform, download=False)
    if subset is not None:
        train_set = Subset(train_set, range(subset))
        test_set = Subset(test_set, range(max(256, subset // 6)))
    train_loader = DataLoader(train_set, batch_size=256, shuffle=True)
    test_loader = DataLoader(test_set, batch_size=256)

    torch.manual_seed(seed)
    model = NotebookMixer(blocks)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = nn.CrossEntropyLoss()

    turns.wait()  # ---- timing starts
    model.train()
    running_loss, correct, total = 0.0, 0, 0
    for images, labels in train_loader:
        optimizer.zero_grad()
        outputs = model(images)
        loss = criterion(outputs, labels)
        loss.backward()
        optimizer.step()
        running_loss += loss.item() * labels.size(0)
        correct += (outputs.argmax(1) == labels).sum().item()
        total += labels.size(0)
        turns.tick()
    train_seconds = turns.elapsed()

    model.eval()
    test_correct, test_total = 0, 0
    with torch.no_grad():
        for images, labels in test_loader:
            outputs = model(images)
            test_correct += (outputs.argmax(1) == labels).sum().item()
            test_total += labels.size(0)
    seconds = turns.elapsed()  # ---- timing ends
    return {"seconds": seconds, "train_seconds": train_seconds,
            "images_per_s": total / train_seconds, "train_loss": running_loss / total,
            "eval_acc": test_correct / test_total}


# ---------------------------------------------------------------------------------------------
# our trainer, and the bare matrix products of its step
# ---------------------------------------------------------------------------------------------

def trainer_epochs(turns: Turns, params: TrialParams, data: TrainValData, seed: int) -> dict:
    step_times: list[float] = []

    def on_step(done: int, total: int) -> None:
        step_times.append(turns.elapsed())  # counted time at the end of each training step
        turns.tick()

    turns.wait()  # ---- timing starts (model construction included, as in any run)
    result = fit(params, data, seed=seed, device="cpu", on_step=on_step).run_to_end()
    seconds = turns.elapsed()  # ---- timing ends
    n = len(result.history)
    # training time of the last epoch: from the end of the previous epoch's last step (or the
    # start) to the end of this epoch's last step; includes the previous epoch's evaluation
    # when n > 1, so it is reported for n == 1 only
    return {"seconds": seconds, "epochs": n, "steps_per_epoch": len(step_times) // n,
            "precision": result.setup.precision,  # what this worker actually ran
            "train_seconds": step_times[-1] if n == 1 else None,
            "images_per_s": len(data.train) / step_times[-1] if n == 1 else None,
            "history": [m.to_dict() for m in result.history],
            "train_loss": result.history[-1].train_loss, "eval_acc": result.history[-1].val_acc}


class StepMatmuls:
    """The matrix products of one training step (forward and backward, hpsearch's Mixer at
    batch 256, `precision`), and nothing else: the rate a step would reach if everything
    but its matmuls were free. Same shapes, threads and turns as the trainer it is set against."""

    def __init__(self, blocks: int, precision: str) -> None:
        dtype = DTYPES[precision]
        self.shapes = training_matmuls(mixer_params(blocks), IMAGE_SHAPE, BATCH)
        self.operands = [(torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype),
                          torch.empty(m, n, dtype=dtype)) for m, k, n in self.shapes]

    def step(self) -> None:
        for a, b, out in self.operands:
            torch.mm(a, b, out=out)


def matmul_epoch(turns: Turns, blocks: int, precision: str, images: int) -> dict:
    """The step's matmuls for an epoch of `images`, and for at least three turns. Its rate is
    that of its fastest turn (the median step in each turn): the limit is what the machine gave
    at its best during the run. With the mean over its turns instead, a 2,048-image run with
    1.5-1.9 cores busy elsewhere put the fp32 trainer at 103%: its turns fell in quieter moments."""
    matmuls = StepMatmuls(blocks, precision)
    by_turn: dict[int, list[float]] = {}
    turns.wait()
    while sum(map(len, by_turn.values())) < max(1, images // BATCH) \
            or turns.elapsed() < 3 * turns.slice_s:
        start = time.perf_counter()
        matmuls.step()
        by_turn.setdefault(turns.turns, []).append(time.perf_counter() - start)
        turns.tick()
    seconds = turns.elapsed()
    step_s = min(statistics.median(times) for times in by_turn.values())
    flops = sum(2 * m * k * n for m, k, n in matmuls.shapes)
    return {"seconds": seconds, "train_seconds": seconds, "precision": precision,
            "images_per_s": BATCH / step_s, "gflops": flops / step_s / 1e9}


# ---------------------------------------------------------------------------------------------
# workers and the scheduler
# ---------------------------------------------------------------------------------------------

def head(split: Split, n: int) -> Split:
    return Split(split.images[:n], split.labels[:n])


def timing_data(subset: int | None) -> TrainValData:
    """Full training set (or its first `subset` images), with the test set (or its first
    subset/6 images) as the once-per-epoch evaluation set."""
    options = DataOptions(dataset="fashion-mnist")
    whole = load_full_train(options)
    full = whole.train
    test = load_test_split(options, whole.mean, whole.std)
    if subset is not None:
        full, test = head(full, subset), head(test, max(256, subset // 6))
    # mean/std only feed the augmentation's fill value, and augmentation is off
    return TrainValData(train=full, val=test, dataset="fashion-mnist", mean=0.0, std=1.0)


def warm_up(data: TrainValData, precision: str) -> None:
    """A tiny run, so one-time costs (thread pools, oneDNN kernel generation) are not timed."""
    small = TrainValData(train=head(data.train, 1024), val=head(data.val, 256),
                         dataset=data.dataset, mean=data.mean, std=data.std)
    fit(mixer_params(1, epochs=1, precision=precision), small, device="cpu").run_to_end()


def worker(conn, job: dict) -> None:
    try:
        _work(conn, job)
    except BaseException:
        import traceback

        conn.send(("error", traceback.format_exc()))


def _work(conn, job: dict) -> None:
    configure_threads(job["threads"])
    turns = Turns(conn, job["slice_s"])
    if job["kind"] == "coursework":
        # warm up with a plain loop: this process must not run our trainer (which tunes the
        # allocator), so the notebook loop runs exactly as it would on its own
        torch.manual_seed(0)
        model = NotebookMixer(job["blocks"])
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(3):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(torch.randn(256, *IMAGE_SHAPE)),
                                        torch.randint(0, 10, (256,))).backward()
            optimizer.step()
        conn.send(("ready", None))
        out = coursework_epoch(turns, job["blocks"], Path(job["tv_root"]), job["subset"],
                               job["seed"])
    elif job["kind"] == "matmul":
        for _ in range(2):
            StepMatmuls(job["blocks"], job["precision"]).step()  # warm-up: kernels, pages
        conn.send(("ready", None))
        out = matmul_epoch(turns, job["blocks"], job["precision"], job["images"])
    else:
        if job["split"] == "train_val":
            data = load_train_val(DataOptions(dataset="fashion-mnist", subset=job["subset"]),
                                  seed=job["seed"])
        else:
            data = timing_data(job["subset"])
        warm_up(data, job["params"]["precision"])
        conn.send(("ready", None))
        out = trainer_epochs(turns, TrialParams.from_dict(job["params"]), data, job["seed"])
    out["turns"] = turns.turns
    out["openmp_env"] = {k: user_environment(k) for k in OPENMP_SETTINGS}  # as torch saw it
    conn.send(("done", out))


def run_interleaved(jobs: dict[str, dict], gap_s: float = 0.05) -> tuple[dict[str, dict], float]:
    """Start one worker per job, let them take turns until all are done; returns their results
    and the CPU share that other processes took meanwhile (in cores)."""
    ctx = mp.get_context("spawn")
    procs, conns = {}, {}
    for name, job in jobs.items():
        parent, child = ctx.Pipe()
        procs[name] = ctx.Process(target=worker, args=(child, job))
        saved = {k: os.environ.get(k) for k in job.get("env", {})}
        for k, v in job.get("env", {}).items():  # the child inherits the environment at start
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        procs[name].start()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k)
            else:
                os.environ[k] = v
        conns[name] = parent
    for name, conn in conns.items():
        kind, payload = conn.recv()
        if kind != "ready":
            raise RuntimeError(f"worker {name} failed:\n{payload}")
    results: dict[str, dict] = {}
    meter = OthersMeter([proc.pid for proc in procs.values()])
    active = list(jobs)
    while active:
        for name in list(active):
            conns[name].send("go")
            kind, payload = conns[name].recv()
            if kind == "error":
                raise RuntimeError(f"worker {name} failed:\n{payload}")
            if kind == "done":
                results[name] = payload
                active.remove(name)
            time.sleep(gap_s)  # let the paused worker's threads settle before the next turn
    others = meter.others()
    for proc in procs.values():
        proc.join(timeout=30)
    return results, others
