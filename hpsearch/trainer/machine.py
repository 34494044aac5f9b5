"""What this machine is, without torch: the CPU and its flags, where decisions about it are
cached, and `hpsearch info`'s last answer, which it shows again without importing torch
(2.3 CPU seconds) while nothing it depends on has changed."""

from __future__ import annotations

import hashlib
import json
import os
import platform
from dataclasses import dataclass
from glob import glob
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from hpsearch.cores import available_cores
from hpsearch.errors import HpsearchError
from hpsearch.files import atomic_write
from hpsearch.paths import cache_dir

# the CPU flags that decide how fast bf16 runs; shown by `hpsearch info` and the benchmark
CPU_FLAGS = ("avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")
# environment variables that change which kernels torch/oneDNN use, so part of the key
KERNEL_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
INFO_FORMAT = 1  # part of the info key: bump it when what `info` reports changes


@dataclass(frozen=True)
class CpuInfo:
    model: str
    flags: frozenset[str]  # every flag the CPU reports

    @property
    def relevant_flags(self) -> dict[str, bool]:
        return {flag: flag in self.flags for flag in CPU_FLAGS}

    @property
    def flags_digest(self) -> str:
        return hashlib.sha256(" ".join(sorted(self.flags)).encode()).hexdigest()[:16]


def cpu_info() -> CpuInfo:
    """The CPU's model name and flags from /proc/cpuinfo (elsewhere: platform's name, no
    flags; the measurement decides either way)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return CpuInfo(platform.processor() or platform.machine(), frozenset())
    model, flags = "", frozenset[str]()
    for line in text.splitlines():
        name, _, value = line.partition(":")
        name = name.strip()
        if name in ("model name", "Model") and not model:
            model = value.strip()
        elif name in ("flags", "Features") and not flags:  # x86, ARM
            flags = frozenset(value.split())
    return CpuInfo(model or platform.machine(), flags)


def decision_path(key: dict[str, object], what: str = "cpu-precision") -> Path:
    """Where a decision about `what` for the machine `key` is cached."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / "runtime" / f"{what}-{digest}.json"


def info_key(device: str, threads: int | None) -> dict[str, object]:
    """Everything `hpsearch info --device DEVICE --threads THREADS` depends on, found without
    importing torch: the CPU, the threads it measures with, the installed torch (its
    version.py, which names the build and its CUDA), the GPUs the driver shows."""
    cpu = cpu_info()
    spec = find_spec("torch")  # finds the package without running it
    version = Path(spec.origin).with_name("version.py") if spec and spec.origin else None
    return {
        "format": INFO_FORMAT, "cpu": cpu.model, "arch": platform.machine(),
        "flags": cpu.flags_digest, "threads": threads or available_cores(), "device": device,
        "torch": _digest(version), "gpus": sorted(glob("/dev/nvidia[0-9]*")),
        "env": {name: os.environ[name] for name in (*KERNEL_ENV, "CUDA_VISIBLE_DEVICES")
                if name in os.environ},
    }


def _digest(path: Path | None) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path else None
    except OSError:
        return None


def cached_info(key: dict[str, object]) -> dict[str, Any] | None:
    """The report `hpsearch info` made last for `key`, if its precision decision is still the
    one cached (not measured again, not removed); else None."""
    try:
        saved = json.loads(decision_path(key, "info").read_text(encoding="utf-8"))
        if saved["key"] != key:
            return None
        report = saved["report"]
        if "cache" in report:  # a CPU's measured decision: still that one?
            decision = json.loads(Path(report["cache"]).read_text(encoding="utf-8"))
            if decision["measured_at"] != report["measurement"]["measured_at"]:
                return None
            report["measurement"]["from_cache"] = True
        return report if isinstance(report, dict) else None
    except (OSError, ValueError, KeyError, TypeError):  # none, or not one of ours: ask torch
        return None


def cache_info(key: dict[str, object], report: dict[str, Any]) -> None:
    """Keep `report` for the next `hpsearch info` with the same key (best effort)."""
    path = decision_path(key, "info")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as out:
            out.write(json.dumps({"key": key, "report": report}, indent=2) + "\n")
    except (OSError, HpsearchError):
        pass  # the next `info` imports torch again, nothing worse
