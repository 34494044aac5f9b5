"""Whether a run compiles its model (`compile = "auto"`): by measurement per machine, against the
run's length.

torch.compile fuses a Mixer step's elementwise work, but what that buys depends on the machine:
-18% per 1-block bf16 step and -9% for 4 blocks on a CPU with AMX, nothing on an AVX-512 EPYC
with AVX512-BF16 (docs/BENCHMARKS.md), and it costs a cold compile of 15-60 s first (minutes on a
busy machine). So a long enough run on a CPU times, once per machine and precision, eager and
compiled training steps of the default Mixer and the compile itself, caches that beside the
precision decision (hpsearch.trainer.runtime: same key, same lock), and compiles only a run whose
estimated saving repays the compile COMPILE_MARGIN times. A run too short to repay even an ideal
compile (a demo's trials, a search's short trials) neither measures nor compiles. Elsewhere (a
GPU) "auto" runs eagerly: not measured there.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from hpsearch.errors import HpsearchError
from hpsearch.files import atomic_write
from hpsearch.params import TrialParams
from hpsearch.trainer.model import matmul_flops_per_image
from hpsearch.trainer.runtime import (
    IMAGE_SHAPE,
    decision_path,
    machine_key,
    measuring_lock,
    probe_steps,
)

# the estimated saving must repay the compile this many times: the estimate comes from another
# model's steps on a machine whose speed varies ±10-20%, and a wrong "yes" costs the whole compile
COMPILE_MARGIN = 2.0
# a run shorter than this at FAST_FLOPS cannot repay a compile (>= 15 s) at any gain measured so
# far (<= 20%) with the margin, so it is decided without measuring anything
MIN_RUN_S = 120.0
FAST_FLOPS = 1e12  # training FLOP/s (matmuls, forward + backward) above any CPU step measured
PROBE_BATCH = 256  # the default batch: compile gains depend on the shapes
PROBE_STEPS = 5  # timed steps each, alternating, after a warm-up (the compile, for compiled)
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompileMeasurement:
    """Median seconds per training step of the default Mixer at PROBE_BATCH, eager and
    compiled, and the seconds the (cold) compile added to the first compiled step."""

    eager_step_s: float
    compiled_step_s: float
    compile_s: float
    precision: str

    @property
    def saving(self) -> float:
        """The share of an eager step that compiling saves (negative: compiled is slower)."""
        return 1.0 - self.compiled_step_s / self.eager_step_s


def training_flops(params: TrialParams, image_shape: tuple[int, int, int], images: int) -> float:
    return 3.0 * matmul_flops_per_image(params, image_shape) * images


def compile_pays(params: TrialParams, image_shape: tuple[int, int, int], images: int,
                 m: CompileMeasurement) -> tuple[bool, str]:
    """Whether compiling saves COMPILE_MARGIN times its cost over a run of `images` training
    images of `image_shape` on `params`' model, from the default Mixer's measurement scaled by
    matmul FLOPs (the compile by the number of blocks: each adds its own graph)."""
    scale = (training_flops(params, image_shape, images)
             / training_flops(TrialParams(), IMAGE_SHAPE, PROBE_BATCH))
    saved = scale * m.eager_step_s * m.saving
    cost = m.compile_s * (params.num_blocks if params.model == "mixer" else 1)
    verdict = saved >= COMPILE_MARGIN * cost
    return verdict, (f"auto: compiling would save ~{saved:.0f} s ({100 * m.saving:.0f}% of an "
                     f"eager step here) for a ~{cost:.0f} s compile, "
                     f"{'at least' if verdict else 'less than'} {COMPILE_MARGIN:g}x its cost")


def choose_compile(params: TrialParams, image_shape: tuple[int, int, int], images: int,
                   device: torch.device, precision: str) -> tuple[bool, str]:
    """(compile this run?, why), for a run of `images` training images of `image_shape` in all."""
    if params.compile != "auto":
        return params.compile == "on", "set explicitly"
    if device.type != "cpu":
        return False, "auto: measured on CPUs only"
    if params.is_factory:  # the FLOPs that scale the measurement are counted for ours only
        return False, 'auto: no cost model for a model of your own (compile = "on" compiles it)'
    if training_flops(params, image_shape, images) < MIN_RUN_S * FAST_FLOPS:
        return False, "auto: too short a run to repay a compile"
    return compile_pays(params, image_shape, images, compile_measurement(precision))


_MEASURED: dict[Path, CompileMeasurement] = {}  # per process: read or measured once


def compile_measurement(precision: str) -> CompileMeasurement:
    """This machine's measurement in `precision`: from memory, the cache, or measured now."""
    key = {**machine_key(), "precision": precision}
    path = decision_path(key, "cpu-compile")
    if path in _MEASURED:
        return _MEASURED[path]
    with measuring_lock(path):  # another process may have measured while this one waited
        found = _read(path, key)
        if found is None:
            found = measure_compile(precision)
            _write(path, key, found)
    _MEASURED[path] = found
    return found


def measure_compile(precision: str) -> CompileMeasurement:
    """Time eager and compiled training steps (forward, backward, Adam) of the default Mixer,
    alternating, and a cold compile (inductor's caches off). Leaves the random state alone."""
    import torch._inductor.config as inductor  # loads the compiler: only when measuring

    bf16 = precision == "bf16"
    with torch.random.fork_rng(devices=[]), inductor.patch(force_disable_caches=True):
        step = probe_steps(PROBE_BATCH, {"eager": bf16, "compiled": bf16}, torch.compile)
        step("eager")  # warm-up: thread pools, oneDNN kernels
        first_compiled = step("compiled")[0]
        times: dict[str, list[float]] = {"eager": [], "compiled": []}
        for _ in range(PROBE_STEPS):
            for name in times:
                times[name].append(step(name)[0])
        torch._dynamo.reset()  # the probe's graphs are of no use to the run
    compiled_s = statistics.median(times["compiled"])
    return CompileMeasurement(statistics.median(times["eager"]), compiled_s,
                              max(0.0, first_compiled - compiled_s), precision)


def _read(path: Path, key: dict[str, object]) -> CompileMeasurement | None:
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved["key"] != key:
            return None
        return CompileMeasurement(**saved["measurement"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("compile measurement %s unreadable (%s); measuring again", path, exc)
        return None


def _write(path: Path, key: dict[str, object], m: CompileMeasurement) -> None:
    """Cache the measurement; failing to is worth a warning only (the next run measures)."""
    record = {"key": key, "measurement": asdict(m),
              "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
        with atomic_write(path) as out:
            out.write(json.dumps(record, indent=2) + "\n")
    except (OSError, HpsearchError) as exc:
        log.warning("compile measurement not cached (%s); the next run measures again", exc)
