"""How fast the commands with nothing to do answer: `run` and `worker` on a finished study, and
`info` when its answer is cached. Whole processes, medians over --repeat rounds: wall seconds
(the target, on an idle machine) and CPU seconds (user + system; the comparable number on a
busy one, where the wall time is mostly waiting for a core).

    .venv/bin/python bench/noops.py            # about a minute; prints one line per command

The study is a dry run (no training), finished once in a temporary folder; the first `info`
measures and caches its answer (not timed), the timed ones read the cache.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STUDY = """[dry_run]
seconds_per_epoch = 0.01

[study]
name = "noop"
n_trials = 3

[data]
dataset = "synthetic"

[budget]
max_epochs = 2

[space]
lr = { low = 1e-3, high = 1e-2, log = true }
"""
TARGET_S = 1.0  # issue 26: each answers in under a second


def hpsearch(*args: str, cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds `hpsearch ARGS` took as a process; fails loudly on a non-zero
    exit."""
    began, used = time.perf_counter(), _children_cpu()
    proc = subprocess.run([sys.executable, "-m", "hpsearch", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    seconds, cpu = time.perf_counter() - began, _children_cpu() - used
    if proc.returncode != 0:
        raise SystemExit(f"hpsearch {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return seconds, cpu


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="Timed rounds (median shown).")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        cwd = Path(folder)
        (cwd / "noop.toml").write_text(STUDY)
        env = {**os.environ, "XDG_CACHE_HOME": str(cwd / "cache"),
               "PYTHONPATH": str(ROOT), "HPSEARCH_DB": f"sqlite:///{cwd / 'noop.db'}"}
        hpsearch("run", "noop.toml", cwd=cwd, env=env)  # the study, finished
        hpsearch("info", cwd=cwd, env=env)  # measures and caches the precision decision
        commands = {"run on a finished study": ("run", "noop.toml"),
                    "worker on a finished study": ("worker", "noop"),
                    "info, answer cached": ("info",)}
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
        for _ in range(args.repeat):  # alternating, so a busy moment hits every command alike
            for name, command in commands.items():
                times[name].append(hpsearch(*command, cwd=cwd, env=env))
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    for name, runs in times.items():
        walls = [wall for wall, _ in runs]
        median = statistics.median(walls)
        verdict = "ok" if median < TARGET_S else f"over the {TARGET_S:.0f} s target"
        print(f"{name:28s} median {median:5.2f} s  (min {min(walls):.2f}, max "
              f"{max(walls):.2f}, {len(runs)} runs; {verdict}); CPU median "
              f"{statistics.median(cpu for _, cpu in runs):.2f} s")


if __name__ == "__main__":
    main()
