"""Trainer throughput: the coursework loop vs `hpsearch.trainer.loop.fit`, same model, same run.

Seconds per epoch on the FULL Fashion-MNIST training set (60,000 images) plus one evaluation
pass over the 10,000 test images (both loops evaluate once per epoch, as a notebook would),
batch 256, Adam lr 1e-3, MLP-Mixer patch 4 / hidden 128 / token 64 / channel 512, 1 and 4 blocks:

  (a) coursework: torchvision FashionMNIST + ToTensor() + DataLoader(shuffle=True), fp32,
      written inline below as a notebook would;
  (b) our trainer, precision="fp32";
  (c) our trainer, precision="bf16" (autocast);
  (d) our trainer with its automatic defaults (precision="auto": whichever of fp32 and bf16
      hpsearch.trainer.runtime measured to be faster on this machine; compile="off" is the default);
  (e) only with --compile: (d) with compile="on", compile time counted in the epoch (the
      worker starts with an empty compile cache, so this is a cold compile).

It prints the CPU's flags that decide bf16 speed and the automatic choice, and checks the
targets of issue 17: the defaults within 5% of the faster of (b) and (c), for each model.

How it is timed, on a machine that other people use at the same time: every configuration
runs in its own worker process, and the workers take turns in slices of about --slice seconds
(one runs, the others wait blocked on a pipe), so a slow stretch of the machine hits every
configuration alike. A configuration's epoch time is the sum of its own slices. Rounds repeat
this with fresh models; the table shows the median over rounds.

Also: validation accuracy after 5 epochs of the 1-block model, fp32 vs default precision (same
seed, no augmentation, the usual 54k/6k train/validation split, both runs interleaved in the same
way), and the training step's achieved FLOP/s (matmul FLOPs x 3 for forward + backward x
images/s) as a share of a large torch.matmul's rate in the same precision, measured in this run.

    .venv/bin/python bench/throughput.py             # ~15 min on 2 idle cores (fast bf16)
    .venv/bin/python bench/throughput.py --quick     # smoke test on 4096 images, ~2 min
    .venv/bin/python bench/throughput.py --subset 1024 --rounds 2 --rounds-4 1 --acc-epochs 1
        # where bf16 is slow (a bf16 epoch costs 5-10x an fp32 one): 15 min on 2 busy cores
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from hpsearch import OPENMP_SETTINGS
from hpsearch.params import DataOptions, TrialParams
from hpsearch.paths import cache_dir
from hpsearch.trainer.data import (
    Split,
    TrainValData,
    _find_idx_files,
    _torchvision_root,
    candidate_dirs,
    load_full_train,
    load_test_split,
    load_train_val,
)
from hpsearch.trainer.loop import fit
from hpsearch.trainer.model import MLPMixer, matmul_flops_per_image
from hpsearch.trainer.runtime import configure_threads, cpu_info, cpu_precision, resolve_precision

RESULTS = Path(__file__).resolve().parent / "results"
IMAGE_SHAPE = (1, 28, 28)


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
                       channel_mlp_dim=512, num_blocks=blocks, batch_size=256, optimizer="adam",
                       lr=1e-3, augment=False).replace(**changes)


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


# ---------------------------------------------------------------------------------------------
# taking turns
# ---------------------------------------------------------------------------------------------

class Turns:
    """A worker's side of the turn-taking: `tick()` after every training step hands the CPU back
    once this turn has lasted `slice_s`; only time inside turns is counted."""

    def __init__(self, conn, slice_s: float) -> None:  # noqa: ANN001 - a multiprocessing pipe
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
# (a) the coursework loop, as written in a notebook (plus turns.tick() for the timing)
# ---------------------------------------------------------------------------------------------

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
    model = MLPMixer(image_shape=IMAGE_SHAPE, patch_size=4, hidden_dim=128, token_mlp_dim=64,
                     channel_mlp_dim=512, num_blocks=blocks)
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
# (b)-(d) our trainer
# ---------------------------------------------------------------------------------------------

def trainer_epochs(turns: Turns, params: TrialParams, data: TrainValData, seed: int) -> dict:
    step_times: list[float] = []

    def on_step(done: int, total: int) -> None:
        step_times.append(turns.elapsed())  # counted time at the end of each training step
        turns.tick()

    turns.wait()  # ---- timing starts (model construction included, as in any run)
    result = fit(params, data, seed=seed, device="cpu", on_step=on_step).run_to_end()
    seconds = turns.elapsed()  # ---- timing ends
    assert result.setup is not None
    n = len(result.history)
    steps_per_epoch = len(step_times) // n
    # training time of the last epoch: from the end of the previous epoch's last step (or the
    # start) to the end of this epoch's last step; includes the previous epoch's evaluation
    # when n > 1, so it is reported for n == 1 only
    return {"seconds": seconds, "epochs": n, "steps_per_epoch": steps_per_epoch,
            "precision": result.setup.precision,  # what this worker actually ran
            "train_seconds": step_times[-1] if n == 1 else None,
            "images_per_s": len(data.train) / step_times[-1] if n == 1 else None,
            "history": [m.to_dict() for m in result.history],
            "train_loss": result.history[-1].train_loss, "eval_acc": result.history[-1].val_acc}


# ---------------------------------------------------------------------------------------------
# workers and the scheduler
# ---------------------------------------------------------------------------------------------

def _head(split: Split, n: int) -> Split:
    return Split(split.images[:n], split.labels[:n])


def timing_data(subset: int | None) -> TrainValData:
    """Full training set (or its first `subset` images), with the test set (or its first
    subset/6 images) as the once-per-epoch evaluation set."""
    options = DataOptions(dataset="fashion-mnist")
    whole = load_full_train(options)
    full = whole.train
    test = load_test_split(options, whole.mean, whole.std)
    if subset is not None:
        full, test = _head(full, subset), _head(test, max(256, subset // 6))
    # mean/std only feed the augmentation's fill value, and augmentation is off
    return TrainValData(train=full, val=test, dataset="fashion-mnist", mean=0.0, std=1.0)


def warm_up(data: TrainValData, precision: str) -> None:
    """A tiny run, so one-time costs (thread pools, oneDNN kernel generation) are not timed."""
    small = TrainValData(train=_head(data.train, 1024), val=_head(data.val, 256),
                         dataset=data.dataset, mean=data.mean, std=data.std)
    fit(mixer_params(1, epochs=1, precision=precision), small, device="cpu").run_to_end()


def worker(conn, job: dict) -> None:  # noqa: ANN001
    try:
        _work(conn, job)
    except BaseException:  # noqa: BLE001 - report any failure to the scheduler, then exit
        import traceback

        conn.send(("error", traceback.format_exc()))


def _work(conn, job: dict) -> None:  # noqa: ANN001
    configure_threads(job["threads"])
    turns = Turns(conn, job["slice_s"])
    if job["kind"] == "coursework":
        # warm up with a plain loop: this process must not run our trainer (which tunes the
        # allocator), so the notebook loop runs exactly as it would on its own
        torch.manual_seed(0)
        model = MLPMixer(image_shape=IMAGE_SHAPE, patch_size=4, hidden_dim=128,
                         token_mlp_dim=64, channel_mlp_dim=512, num_blocks=job["blocks"])
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(3):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(torch.randn(256, *IMAGE_SHAPE)),
                                        torch.randint(0, 10, (256,))).backward()
            optimizer.step()
        conn.send(("ready", None))
        tv_root = Path(job["tv_root"])
        out = coursework_epoch(turns, job["blocks"], tv_root, job["subset"], job["seed"])
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


def matmul_rate(dtype: torch.dtype, n_max: int, repeats: int,
                budget_s: float = 0.5) -> tuple[float, int]:
    """FLOP/s of an n x n x n torch.matmul in `dtype` (best of `repeats`) and the n used: n_max,
    or less where one matmul would take over `budget_s` (a 2048^3 bf16 matmul took ~60 s on an
    AVX2-only CPU, which has no bf16 kernels worth the name)."""
    def once(n: int) -> float:
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        torch.matmul(a, b)  # warm-up
        best = float("inf")
        for _ in range(repeats if n > 256 else 1):
            t = time.perf_counter()
            torch.matmul(a, b)
            best = min(best, time.perf_counter() - t)
        return 2 * n**3 / best

    rate, n = once(256), 256
    while n < n_max and 2 * (2 * n) ** 3 / rate <= budget_s:
        n *= 2
    return (once(n) if n > 256 else rate), n


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------

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
    parser.add_argument("--acc-epochs", type=int, default=None, help="default 5")
    parser.add_argument("--compile", action="store_true", help="also time compile='on'")
    parser.add_argument("--slice", type=float, default=2.0,
                        help="seconds per turn when the configurations take turns")
    parser.add_argument("--trainer-env", action="append", default=[], metavar="KEY=VALUE",
                        help="environment of the trainer workers (repeatable; KEY= unsets), "
                        "e.g. GOMP_SPINCOUNT= to measure without hpsearch's OpenMP setting "
                        "hpsearch sets for itself")
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
    folder = next(f for f in (_find_idx_files("fashion-mnist", d)
                              for d in candidate_dirs("fashion-mnist", None)) if f is not None)
    tv_root = _torchvision_root("fashion-mnist", folder, cache_dir() / "torchvision")
    common = {"threads": threads, "slice_s": args.slice, "subset": subset, "seed": args.seed,
              "tv_root": str(tv_root)}

    matmul: dict[str, list[float]] = {"fp32": [], "bf16": []}
    n_mm = 1024 if args.quick else 2048

    def measure_matmul() -> None:
        sizes = {}
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            rate, sizes[name] = matmul_rate(dtype, n_mm, 5)
            matmul[name].append(rate)
        log(f"matmul: fp32 {matmul['fp32'][-1] / 1e9:.1f} GFLOP/s ({sizes['fp32']}^3), "
            f"bf16 {matmul['bf16'][-1] / 1e9:.1f} GFLOP/s ({sizes['bf16']}^3)")

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
        if args.compile:
            # an empty compile cache, so the epoch pays the full (cold) compile time
            cache = tempfile.mkdtemp(prefix="hpsearch-bench-inductor-")
            job = trainer(compile="on")
            job["env"]["TORCHINDUCTOR_CACHE_DIR"] = cache
            jobs["trainer_default_compile"] = job
        return jobs

    measure_matmul()
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
        measure_matmul()

    # --- accuracy: 1 block, fp32 vs default precision, same seed, standard split ---
    acc_jobs = {name: {**common, "kind": "trainer", "split": "train_val", "blocks": 1,
                       "env": dict(trainer_env),
                       "params": mixer_params(1, epochs=args.acc_epochs, **changes).to_dict()}
                for name, changes in (("trainer_fp32", {"precision": "fp32"}),
                                      ("trainer_default", {}))}
    accuracy, acc_others = run_interleaved(acc_jobs)
    for name, out in accuracy.items():
        log(f"accuracy {name}: val acc per epoch "
            + " ".join(f"{m['val_acc']:.4f}" for m in out["history"])
            + f"; {out['seconds']:.1f} s for {args.acc_epochs} epochs")
    measure_matmul()

    report = summarise(runs, matmul, accuracy, acc_others, threads, default_dtype, args)
    report["cpu"] = {"model": cpu.model, "flags": cpu.relevant_flags,
                     "probe": {"fp32_steps_per_s": 1 / m.fp32_step_s,
                               "bf16_steps_per_s": 1 / m.bf16_step_s,
                               "batch": m.batch, "reason": decision.reason}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    log(f"wrote {args.out}")
    print(report["summary_line"], flush=True)


def summarise(runs: dict, matmul: dict, accuracy: dict, acc_others: float, threads: int,
              default_dtype: str, args: argparse.Namespace) -> dict:
    mm = {k: max(v) for k, v in matmul.items()}  # best of the samples: the attainable rate
    table, ratios, omp_ratios, vs_best = [], {}, {}, {}
    for blocks, by_config in runs.items():
        flops_per_image = 3 * matmul_flops_per_image(mixer_params(int(blocks)), IMAGE_SHAPE)
        base = statistics.median(o["seconds"] for o in by_config["coursework"])
        for name, outs in by_config.items():
            sec = statistics.median(o["seconds"] for o in outs)
            ips = statistics.median(o["images_per_s"] for o in outs)
            dtype = outs[0].get("precision", "fp32")  # the coursework loop runs fp32
            achieved = flops_per_image * ips
            table.append({
                "blocks": int(blocks), "config": name, "precision": dtype, "rounds": len(outs),
                "seconds_per_epoch": sec,
                "all_seconds": [round(o["seconds"], 2) for o in outs],
                "train_seconds": statistics.median(o["train_seconds"] for o in outs),
                "images_per_s": ips,
                "achieved_gflops": achieved / 1e9,
                "matmul_gflops": mm[dtype] / 1e9,
                "fraction_of_matmul": achieved / mm[dtype],
                "speedup_vs_coursework": base / sec,
                "others_cores": [round(o["others_cores"], 2) for o in outs],
                "openmp_env": outs[0]["openmp_env"],
            })
            if name == "trainer_default":
                ratios[blocks] = base / sec
                best = min(statistics.median(o["seconds"] for o in by_config[n])
                           for n in ("trainer_fp32", "trainer_bf16"))
                vs_best[blocks] = sec / best  # target: <= 1.05
                if "coursework_hpsearch_omp" in by_config:
                    omp_ratios[blocks] = statistics.median(
                        o["seconds"] for o in by_config["coursework_hpsearch_omp"]) / sec
    fp32_acc = accuracy["trainer_fp32"]["history"][-1]["val_acc"]
    default_acc = accuracy["trainer_default"]["history"][-1]["val_acc"]
    def ratio_text(by_blocks: dict) -> str:
        return ", ".join(f"{r:.1f}x ({b} block{'s' if b != '1' else ''})"
                         for b, r in by_blocks.items())

    line = "speed-up vs coursework loop: " + ratio_text(ratios)
    if omp_ratios:
        line += f" (vs that loop with hpsearch's OpenMP settings: {ratio_text(omp_ratios)})"
    line += "; defaults vs the faster of fp32/bf16: " + ", ".join(
        f"{r:.2f}x its time ({b} block{'s' if b != '1' else ''})" for b, r in vs_best.items())
    return {
        "command": "python bench/throughput.py " + " ".join(sys.argv[1:]),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "torch": torch.__version__, "python": platform.python_version(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": threads,
        "cpu_count": os.cpu_count(), "default_precision": default_dtype,
        "method": f"configurations interleaved in turns of ~{args.slice} s, each in its own "
                  "process; epoch time = sum of its own turns; median over rounds",
        "timing_data": {"train_images": args.subset or 60000,
                        "eval_images": max(256, args.subset // 6) if args.subset else 10000,
                        "note": "each epoch also evaluates (part of) the test set once"},
        "matmul_gflops": {k: v / 1e9 for k, v in mm.items()},
        "matmul_all_gflops": {k: [round(x / 1e9, 1) for x in v] for k, v in matmul.items()},
        "table": table,
        "speedup_vs_coursework": ratios,
        "default_time_vs_best_precision": vs_best,
        "speedup_vs_coursework_hpsearch_omp": omp_ratios,
        "accuracy": {
            "epochs": args.acc_epochs, "split": "load_train_val, val_fraction 0.1, seed "
            f"{args.seed}", "fp32_val_acc": fp32_acc, "default_val_acc": default_acc,
            "difference_points": 100 * (default_acc - fp32_acc),
            "fp32_seconds": accuracy["trainer_fp32"]["seconds"],
            "default_seconds": accuracy["trainer_default"]["seconds"],
            "others_cores": acc_others,
            "history": {k: v["history"] for k, v in accuracy.items()},
        },
        "summary_line": line,
    }


def print_table(report: dict) -> None:
    print()
    data = report["timing_data"]
    print(f"s/epoch: {data['train_images']:,} training images + {data['eval_images']:,} "
          "evaluation images, median over rounds; img/s and GFLOP/s: training steps only")
    print(f"{'blocks':>6} {'config':<24} {'prec':<5} {'s/epoch':>8} {'rounds':>6} {'img/s':>7} "
          f"{'GFLOP/s':>8} {'% matmul':>8} {'speed-up':>8}")
    for r in report["table"]:
        print(f"{r['blocks']:>6} {r['config']:<24} {r['precision']:<5} "
              f"{r['seconds_per_epoch']:>8.1f} {r['rounds']:>6} {r['images_per_s']:>7,.0f} "
              f"{r['achieved_gflops']:>8.1f} {100 * r['fraction_of_matmul']:>7.1f}% "
              f"{r['speedup_vs_coursework']:>7.2f}x")
    mm = report["matmul_gflops"]
    print(f"matmul rate (best in this run, large square matmul): fp32 {mm['fp32']:.0f} GFLOP/s, "
          f"bf16 {mm['bf16']:.0f} GFLOP/s")
    acc = report["accuracy"]
    print(f"val acc after {acc['epochs']} epochs (1 block, seed 0, no augmentation): fp32 "
          f"{100 * acc['fp32_val_acc']:.2f}%, default ({report['default_precision']}) "
          f"{100 * acc['default_val_acc']:.2f}%, difference {acc['difference_points']:+.2f} "
          f"points; {acc['fp32_seconds']:.0f} s vs {acc['default_seconds']:.0f} s")


if __name__ == "__main__":
    main()
