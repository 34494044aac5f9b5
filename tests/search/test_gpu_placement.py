"""Local workers on GPUs: round-robin placement through CUDA_VISIBLE_DEVICES, tested on the CPU
with a made-up device list (dry-run trials never touch CUDA)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from hpsearch.cores import gpu_placement
from hpsearch.errors import ConfigError
from hpsearch.search.study_file import load_study, parse_gpus
from tests.study_files import write_tiny_study

ROOT = Path(__file__).resolve().parents[2]


def test_workers_go_round_robin_at_most_k_per_gpu() -> None:
    assert gpu_placement(4, ("0", "1"), 2) == ["0", "1", "0", "1"]
    assert gpu_placement(3, ("0", "1", "2", "3"), 2) == ["0", "1", "2"]  # spread, not packed
    assert gpu_placement(2, (), 1) == [None, None]
    with pytest.raises(ConfigError, match="5 workers do not fit on 2 GPU"):
        gpu_placement(5, ("0", "1"), 2)


def test_gpu_ids_are_checked() -> None:
    assert parse_gpus("0, 1,GPU-8f2c-aa", "--gpus") == ("0", "1", "GPU-8f2c-aa")
    assert parse_gpus([0, 3], "study") == ("0", "3")
    for bad in ("0,0", "0;1", [True], [1.5]):
        with pytest.raises(ConfigError, match="gpus"):
            parse_gpus(bad, "--gpus")


def test_the_study_file_places_workers_and_the_options_win(tmp_path: Path) -> None:
    # trials of ~6 s (3 dry-run epochs of 2 s): a worker that starts late on a loaded machine
    # still finds the study unfinished and joins (logging its GPU), rather than exiting with
    # nothing to run after the others have done all four
    path = write_tiny_study(tmp_path, dry_run=2.0)
    path.write_text(path.read_text().replace(
        "[workers]", "[workers]\ngpus = [2, 5]\nworkers_per_gpu = 2"))
    assert (load_study(path).workers.gpus, load_study(path).workers.workers_per_gpu) == (
        ("2", "5"), 2)
    # four workers (2 GPUs × 2) from the file alone; each worker's log says what it saw
    done = subprocess.run([sys.executable, "-m", "hpsearch", "run", str(path), "--db",
                           f"sqlite:///{tmp_path / 'g.db'}", "--log-dir", str(tmp_path / "logs"),
                           "--top", "0"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 worker(s) on GPU(s) 2,5" in done.stdout
    seen = {}
    for log in sorted((tmp_path / "logs").glob("*/worker-*.log")):
        found = re.search(r"CUDA_VISIBLE_DEVICES=(\S+)\)", log.read_text())
        seen[log.stem] = found.group(1) if found else None
    assert seen == {"worker-0": "2", "worker-1": "5", "worker-2": "2", "worker-3": "5"}
    # --gpus on the command line wins over the file; too many workers are refused up front
    refused = subprocess.run([sys.executable, "-m", "hpsearch", "run", str(path), "--db",
                              f"sqlite:///{tmp_path / 'g.db'}", "--gpus", "0", "--workers", "3"],
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0
    assert refused.stderr.strip() == ("hpsearch: error: 3 workers do not fit on 1 GPU(s) with 2 "
                                      "worker(s) per GPU; raise --workers-per-gpu or add GPUs")
