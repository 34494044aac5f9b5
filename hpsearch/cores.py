"""Where workers run: how many CPU cores this process may use (affinity-aware, e.g. under Slurm
or taskset), and which GPU each local worker gets."""

import os
from collections.abc import Sequence

from hpsearch.errors import ConfigError


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def worker_threads(workers: int, threads: int | None) -> int:
    """Each local worker's CPU threads: `threads`, else its share of the cores."""
    return threads or max(1, available_cores() // workers)


def gpu_placement(workers: int, gpus: Sequence[str], per_gpu: int) -> list[str | None]:
    """The GPU (a CUDA_VISIBLE_DEVICES value) of each local worker: round-robin over `gpus`,
    so that fewer workers than slots still spread over every GPU, at most `per_gpu` on one.
    Without GPUs every worker gets None (its --device decides)."""
    if not gpus:
        return [None] * workers
    if workers > len(gpus) * per_gpu:
        raise ConfigError(f"{workers} workers do not fit on {len(gpus)} GPU(s) with "
                          f"{per_gpu} worker(s) per GPU; raise --workers-per-gpu or add GPUs")
    return [gpus[index % len(gpus)] for index in range(workers)]
