"""How fast the commands with nothing to do answer: `run` and `worker` on a finished study, and
`info` when its answer is cached. Whole processes, medians over --repeat rounds.

    .venv/bin/python bench/noops.py            # about a minute; prints one line per command

The study is a dry run (no training), finished once in a temporary folder; the first `info`
measures and caches its answer (not timed), the timed ones read the cache.
"""

from __future__ import annotations

import argparse
import os
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


def hpsearch(*args: str, cwd: Path, env: dict[str, str]) -> float:
    """Seconds `hpsearch ARGS` took as a process; fails loudly on a non-zero exit."""
    began = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "hpsearch", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - began
    if proc.returncode != 0:
        raise SystemExit(f"hpsearch {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return seconds


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
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.repeat):  # alternating, so a busy moment hits every command alike
            for name, command in commands.items():
                times[name].append(hpsearch(*command, cwd=cwd, env=env))
    for name, seconds in times.items():
        median = statistics.median(seconds)
        verdict = "ok" if median < TARGET_S else f"over the {TARGET_S:.0f} s target"
        print(f"{name:28s} median {median:5.2f} s  (min {min(seconds):.2f}, max "
              f"{max(seconds):.2f}, {len(seconds)} runs; {verdict})")


if __name__ == "__main__":
    main()
