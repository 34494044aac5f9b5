"""bench/throughput.py --profile: where a training step's time goes, op by op.

The trainer itself (`fit`, training steps only: the epoch has no validation split) runs a few
steps of the benchmark's Mixer under torch.profiler, after an unprofiled warm-up epoch, for 1 and
4 blocks in fp32 and bf16. Printed per model and precision: the step's wall time, the share of
it spent in matrix products, and the top ops by their own (self) time, with their share of the
step and calls per step. "Outside ops" is the rest of the wall time: Python, the loop, the
profiler's own overhead. On a shared machine the shares are what to read, not the milliseconds.
"""

from __future__ import annotations

import time

from throughput_workers import BATCH, head, log, mixer_params, timing_data
from torch.profiler import ProfilerActivity, profile

from hpsearch.trainer.data import TrainValData
from hpsearch.trainer.loop import fit

MATMUL_OPS = frozenset({"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"})
TOP = 12


def profile_steps(steps: int, threads: int) -> None:
    whole = timing_data(steps * BATCH)
    data = TrainValData(train=whole.train, val=head(whole.val, 0), dataset=whole.dataset,
                        mean=whole.mean, std=whole.std)
    log(f"profiling {steps} training steps of batch {BATCH}, {threads} threads")
    for blocks in (1, 4):
        for precision in ("fp32", "bf16"):
            params = mixer_params(blocks, epochs=1, precision=precision)
            fit(params, data, device="cpu").run_to_end()  # warm-up: kernels, allocator
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                started = time.perf_counter()
                fit(params, data, device="cpu").run_to_end()
                wall = time.perf_counter() - started
            print_profile(prof.key_averages(), blocks, precision, wall / steps, steps)


def print_profile(events, blocks: int, precision: str, step_s: float,
                  steps: int) -> None:
    ops = sorted((e for e in events if e.self_cpu_time_total > 0),
                 key=lambda e: e.self_cpu_time_total, reverse=True)
    per_step = {e.key: e.self_cpu_time_total / 1e6 / steps for e in ops}
    in_ops = sum(per_step.values())
    matmul = sum(t for name, t in per_step.items() if name in MATMUL_OPS)
    print(f"\n{blocks} block{'s' if blocks > 1 else ''}, {precision}: {step_s * 1e3:.1f} ms per "
          f"step (profiled); matrix products {100 * matmul / step_s:.0f}%, other ops "
          f"{100 * (in_ops - matmul) / step_s:.0f}%, outside ops "
          f"{100 * max(0.0, step_s - in_ops) / step_s:.0f}%")
    print(f"  {'op':<48} {'ms/step':>8} {'share':>6} {'calls/step':>10}")
    for e in ops[:TOP]:
        print(f"  {e.key[:48]:<48} {per_step[e.key] * 1e3:>8.2f} "
              f"{100 * per_step[e.key] / step_s:>5.1f}% {e.count / steps:>10.1f}")
