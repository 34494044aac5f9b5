"""What a run executes on: the one device parser, and the precision, chosen by measuring.

`precision = "auto"` on a CPU must not trust the CPU's name. bf16 autocast trained ~2x faster
per epoch on CPUs with AMX, but an AVX-512 CPU without AVX512-BF16/AMX ran bf16 matmuls 5x
slower than fp32, which made the default trainer 2.3x slower than the coursework loop (issue 17,
docs/BENCHMARKS.md); AVX2-only CPUs fare no better. So the first run on a machine times a few
training steps of the default Mixer in both precisions and keeps the decision in the user's cache
folder, keyed by everything that changes the answer (CPU, its flags, torch, threads, the kernel
environment variables). Pure torch: the trainer's side of the layering.
"""

from __future__ import annotations

import copy
import ctypes
import fcntl
import json
import logging
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from hpsearch.cores import available_cores
from hpsearch.errors import ConfigError, HpsearchError
from hpsearch.files import atomic_write
from hpsearch.params import NUM_CLASSES, TrialParams, check_device
from hpsearch.trainer.machine import KERNEL_ENV, cpu_info, decision_path
from hpsearch.trainer.model import build_model

# bf16 must be this much faster per step to be chosen: a smaller gain is within what the noise of
# a shared machine does to a sub-second measurement (±10-20% between identical runs), and bf16
# costs a little accuracy, so a tie or a near-tie keeps fp32
BF16_MIN_SPEEDUP = 1.15
# bf16's loss on the probe's first batch (same weights as fp32's) must be within this share of
# fp32's: bf16 rounding moves an initial loss of ~2.3 by ~0.01; a broken kernel moves it far more
BF16_LOSS_TOLERANCE = 0.05
PROBE_BATCH = 32  # images per probe step: the default Mixer's shapes at 1/8 of its batch
PROBE_STEPS = 3  # timed steps per precision (after one untimed warm-up step each)
# once one timed bf16 step is this much slower than fp32's, bf16 cannot win: stop, since each
# bf16 step costs ~5x an fp32 one on CPUs without bf16 instructions
PROBE_GIVE_UP = 1.5
IMAGE_SHAPE = (1, 28, 28)
CACHE_FORMAT = 1  # part of the cache key: bump it when the probe or the rule changes
log = logging.getLogger(__name__)


def configure_threads(threads: int | None) -> int:
    """Use `threads` intra-op threads (default: every core this process may run on)."""
    n = threads or available_cores()
    torch.set_num_threads(n)
    return n


_MALLOC_TUNED = False


def tune_malloc() -> bool:
    """Keep freed memory in the process instead of handing it back to the OS at once.

    glibc serves large blocks (each activation of a training step is a few MB) with mmap and
    returns them to the OS when freed, so every step page-faults its activations in afresh:
    ~6,000 minor faults per step for the default Mixer, 10-15% of a CPU step. Raising the mmap
    and trim thresholds lets those blocks be reused (the usual advice is jemalloc/tcmalloc via
    LD_PRELOAD; this gets the same effect in-process). Once per process; glibc on Linux only;
    set HPSEARCH_MALLOC_TUNING=0 to skip. Returns whether the settings were applied.
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED:
        return True
    if not sys.platform.startswith("linux") or os.environ.get("HPSEARCH_MALLOC_TUNING") == "0":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
        # 32 MiB is the largest mmap threshold glibc accepts on 64-bit; blocks below it come
        # from the heap, and up to 1 GiB of freed heap is kept for reuse rather than trimmed
        ok = libc.mallopt(m_mmap_threshold, 32 << 20) == 1
        ok = libc.mallopt(m_trim_threshold, 1 << 30) == 1 and ok
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return False
    _MALLOC_TUNED = ok
    return ok


def resolve_device(name: str = "auto") -> torch.device:
    """The torch device for a --device name; ConfigError for an unknown name or a missing GPU."""
    if check_device(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but no CUDA GPU is available")
    return torch.device(name)


@dataclass(frozen=True)
class RunSetup:
    """What a training run actually runs with: the record of a trial's hardware choices."""

    device: str  # "cpu" or "cuda"
    precision: str  # "fp32" or "bf16" (autocast), never "auto"
    threads: int  # torch intra-op threads
    reason: str  # why, e.g. "auto: bf16 measured 0.19x as fast as fp32 here, needs 1.15x"

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.precision == "bf16" else None

    def line(self) -> str:
        return (f"{self.device}, {self.precision} ({self.reason}), "
                f"{self.threads} thread{'s' if self.threads != 1 else ''}")


def resolve_precision(precision: str, device: torch.device) -> RunSetup:
    """The one precision resolver. "fp32"/"bf16" are used as given; "auto" is bf16 on a GPU
    that supports it, and on a CPU whatever `cpu_precision()` measured to be faster."""
    threads = torch.get_num_threads()
    if precision in ("fp32", "bf16"):
        return RunSetup(device.type, precision, threads, "set explicitly")
    if precision != "auto":
        raise ValueError(f"unknown precision {precision!r} (choose from: auto, fp32, bf16)")
    if device.type == "cuda":  # tensor cores: bf16 is fast wherever it is supported (Ampere+)
        fast = torch.cuda.is_bf16_supported()
        return RunSetup(device.type, "bf16" if fast else "fp32", threads,
                        "auto: the GPU supports bf16" if fast else "auto: no bf16 on this GPU")
    decision = cpu_precision()
    return RunSetup(device.type, decision.precision, threads, f"auto: {decision.reason}")


# ---------------------------------------------------------------------------------------------
# the CPU probe and its cached decision
# ---------------------------------------------------------------------------------------------

def machine_key() -> dict[str, object]:
    """Everything that changes which precision is faster here. A cached decision counts only
    for the same key; a home folder shared by different machines keeps one file per key."""
    cpu = cpu_info()
    return {
        "format": CACHE_FORMAT,
        "cpu": cpu.model,
        "arch": platform.machine(),
        "flags": cpu.flags_digest,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": "cpu",
        "env": {name: os.environ[name] for name in KERNEL_ENV if name in os.environ},
    }


@dataclass(frozen=True)
class Measurement:
    """Median seconds per training step of the probe, and each precision's loss on the first
    (same weights, same batch) step."""

    fp32_step_s: float
    bf16_step_s: float
    fp32_loss: float
    bf16_loss: float
    batch: int = PROBE_BATCH
    seconds: float = 0.0  # how long the whole probe took

    @property
    def bf16_speedup(self) -> float:
        return self.fp32_step_s / self.bf16_step_s


@dataclass(frozen=True)
class CpuDecision:
    precision: str  # "fp32" or "bf16"
    reason: str
    measurement: Measurement
    measured_at: str  # ISO time of the measurement
    path: Path  # where the decision is (or would have been) cached
    from_cache: bool


def choose_precision(m: Measurement) -> tuple[str, str]:
    """fp32 unless bf16 passes the loss check and is at least BF16_MIN_SPEEDUP as fast."""
    close = BF16_LOSS_TOLERANCE * max(1.0, abs(m.fp32_loss))
    if not (math.isfinite(m.bf16_loss) and abs(m.bf16_loss - m.fp32_loss) <= close):
        return "fp32", (f"bf16 failed the accuracy check (loss {m.bf16_loss:.4g} vs fp32's "
                        f"{m.fp32_loss:.4g})")
    speed = f"bf16 measured {m.bf16_speedup:.2f}x as fast as fp32 here"
    if m.bf16_speedup >= BF16_MIN_SPEEDUP:
        return "bf16", speed
    return "fp32", f"{speed}, needs {BF16_MIN_SPEEDUP}x"


def probe_step(model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
               labels: torch.Tensor, bf16: bool) -> tuple[float, float]:
    """One timed training step (forward, backward, optimiser) of a probe: (seconds, loss)."""
    begin = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = nn.functional.cross_entropy(model(images).float(), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return time.perf_counter() - begin, loss.item()


def probe_steps(batch: int, bf16: dict[str, bool],
                wrap: Callable[[nn.Module], nn.Module] = lambda m: m
                ) -> Callable[[str], tuple[float, float]]:
    """step(name) -> (seconds, loss) of a training step (forward, backward, Adam) of one of two
    copies of the default Mixer (the second `wrap`ped), named by `bf16`'s keys, in bf16
    autocast where it says so, on one random batch. Seeds torch: call it under fork_rng."""
    torch.manual_seed(0)
    model = build_model(TrialParams(batch_size=batch), IMAGE_SHAPE)
    first, second = bf16
    models = {first: model, second: wrap(copy.deepcopy(model))}
    optimizers = {name: torch.optim.Adam(m.parameters(), lr=1e-3, fused=True)
                  for name, m in models.items()}
    images = torch.randn(batch, *IMAGE_SHAPE)
    labels = torch.randint(0, NUM_CLASSES, (batch,))
    return lambda name: probe_step(models[name], optimizers[name], images, labels, bf16[name])


def measure_cpu(batch: int = PROBE_BATCH, steps: int = PROBE_STEPS) -> Measurement:
    """Time training steps (forward, backward, Adam) of the default Mixer in fp32 and in bf16
    autocast, alternating, so a slow moment of a shared machine hits both alike. The caller's
    random state is left as it was: a run's results must not depend on whether it measured."""
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        step = probe_steps(batch, {"fp32": False, "bf16": True})
        # untimed warm-ups (thread pools, oneDNN kernel generation) on the same weights and batch
        _, fp32_loss = step("fp32")
        _, bf16_loss = step("bf16")
        times: dict[str, list[float]] = {"fp32": [], "bf16": []}
        for _ in range(steps):
            for name in times:
                times[name].append(step(name)[0])
            if times["bf16"][-1] > PROBE_GIVE_UP * times["fp32"][-1]:
                break
    return Measurement(statistics.median(times["fp32"]), statistics.median(times["bf16"]),
                       fp32_loss, bf16_loss, batch, time.perf_counter() - started)


_DECIDED: dict[Path, CpuDecision] = {}  # per process: read or measured once


def cpu_precision(*, remeasure: bool = False) -> CpuDecision:
    """The precision "auto" means on this CPU with the current thread count: from this
    process's memory, else the cache file, else measured now (and cached). `remeasure`
    ignores both and measures again."""
    key = machine_key()
    path = decision_path(key)
    if not remeasure:
        known = _DECIDED.get(path) or _read(path, key)
        if known is not None:
            _DECIDED[path] = known
            return known
    with measuring_lock(path):
        # another process may have measured while this one waited for the lock
        decision = None if remeasure else _read(path, key)
        if decision is None:
            measurement = measure_cpu()
            precision, reason = choose_precision(measurement)
            decision = CpuDecision(precision, reason, measurement,
                                   time.strftime("%Y-%m-%dT%H:%M:%S%z"), path, False)
            _write(decision, key)
    _DECIDED[path] = decision
    return decision


def _read(path: Path, key: dict[str, object]) -> CpuDecision | None:
    """The cached decision at `path` if it is whole and made for `key`, else None."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("precision cache %s unreadable (%s); measuring again", path, exc)
        return None
    try:
        if saved["key"] != key:  # another CPU, torch, thread count (a copied cache folder)
            return None
        if saved["precision"] not in ("fp32", "bf16"):
            raise ValueError(f"precision {saved['precision']!r}")
        return CpuDecision(saved["precision"], str(saved["reason"]),
                           Measurement(**saved["measurement"]), str(saved["measured_at"]),
                           path, True)
    except (KeyError, TypeError, ValueError) as exc:
        log.warning("precision cache %s is not a decision (%s); measuring again", path, exc)
        return None


def _write(decision: CpuDecision, key: dict[str, object]) -> None:
    """Cache the decision; failing to is worth a warning only (the next process measures)."""
    record = {"key": key, "precision": decision.precision, "reason": decision.reason,
              "measurement": asdict(decision.measurement), "measured_at": decision.measured_at}
    try:
        decision.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(decision.path) as out:
            out.write(json.dumps(record, indent=2) + "\n")
    except (OSError, HpsearchError) as exc:
        log.warning("precision decision not cached (%s); the next run measures again", exc)


@contextmanager
def measuring_lock(path: Path) -> Iterator[None]:
    """One process measures at a time: workers starting together would otherwise time each
    other's load, and the later ones then read the first one's decision."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path.with_suffix(".lock"), "a")  # noqa: SIM115 - held for the block
    except OSError:  # an unwritable cache: measure without the lock
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def machine_report(device: torch.device, *, remeasure: bool = False) -> dict[str, object]:
    """What `hpsearch info` shows: the device, the CPU and its flags, torch, and what
    precision "auto" means here and why (measuring now if nothing is cached, or `remeasure`)."""
    cpu = cpu_info()
    report: dict[str, object] = {
        "device": device.type,
        "cpu": cpu.model,
        "cpu_flags": cpu.relevant_flags,
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(device)
    else:
        decision = cpu_precision(remeasure=remeasure)
        m = decision.measurement
        report["measurement"] = {
            "fp32_steps_per_s": 1 / m.fp32_step_s, "bf16_steps_per_s": 1 / m.bf16_step_s,
            "bf16_speedup": m.bf16_speedup, "batch": m.batch, "fp32_loss": m.fp32_loss,
            "bf16_loss": m.bf16_loss, "probe_seconds": m.seconds,
            "measured_at": decision.measured_at, "from_cache": decision.from_cache}
        report["cache"] = str(decision.path)
    setup = resolve_precision("auto", device)
    report["precision"] = setup.precision
    report["reason"] = setup.reason
    return report
