"""How many CPU cores this process may use (affinity-aware, e.g. under Slurm or taskset)."""

import os


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
