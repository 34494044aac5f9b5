"""How `precision = "auto"` is decided on a CPU: the rule (with faked timings), the per-machine
cache (another CPU, torch or thread count; a corrupt or unwritable cache), forced precisions, and
`hpsearch info` as a user runs it."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hpsearch.params import DataOptions, TrialParams
from hpsearch.trainer import runtime
from hpsearch.trainer.data import load_train_val
from hpsearch.trainer.loop import fit
from hpsearch.trainer.machine import CPU_FLAGS, CpuInfo
from hpsearch.trainer.runtime import (
    BF16_MIN_SPEEDUP,
    Measurement,
    choose_precision,
    cpu_precision,
    resolve_precision,
)

CPU = torch.device("cpu")
FAST_BF16 = Measurement(fp32_step_s=0.10, bf16_step_s=0.05, fp32_loss=2.30, bf16_loss=2.31)
SLOW_BF16 = Measurement(fp32_step_s=0.10, bf16_step_s=0.50, fp32_loss=2.30, bf16_loss=2.31)


class FakeProbe:
    """Stands in for the timing probe: returns the given measurement and counts its calls."""

    def __init__(self, measurement: Measurement) -> None:
        self.measurement = measurement
        self.calls = 0

    def __call__(self) -> Measurement:
        self.calls += 1
        return self.measurement


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache folder and an empty per-process memory; returns hpsearch's cache folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(runtime, "_DECIDED", {})
    return tmp_path / "cache" / "hpsearch"


def probe(monkeypatch: pytest.MonkeyPatch, measurement: Measurement) -> FakeProbe:
    fake = FakeProbe(measurement)
    monkeypatch.setattr(runtime, "measure_cpu", fake)
    return fake


def new_process() -> None:
    """Forget what this process decided, as a fresh process would."""
    runtime._DECIDED.clear()


# ---------------------------------------------------------------------------------------------
# the rule
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("bf16_step_s", "expected"), [
    (0.05, "bf16"),  # twice as fast (a CPU with AMX)
    (0.10 / BF16_MIN_SPEEDUP, "bf16"),  # exactly the margin
    (0.10 / (BF16_MIN_SPEEDUP - 0.02), "fp32"),  # faster, but within the noise
    (0.10, "fp32"),  # a tie keeps fp32
    (0.50, "fp32"),  # five times slower (AVX-512 without BF16/AMX)
])
def test_bf16_only_when_clearly_faster(bf16_step_s: float, expected: str) -> None:
    m = Measurement(fp32_step_s=0.10, bf16_step_s=bf16_step_s, fp32_loss=2.3, bf16_loss=2.3)
    precision, reason = choose_precision(m)
    assert precision == expected
    assert f"{m.bf16_speedup:.2f}x" in reason


@pytest.mark.parametrize("bf16_loss", [float("nan"), float("inf"), 2.3 * 1.2])
def test_fast_bf16_that_fails_the_accuracy_check_is_not_chosen(bf16_loss: float) -> None:
    m = Measurement(fp32_step_s=0.10, bf16_step_s=0.02, fp32_loss=2.3, bf16_loss=bf16_loss)
    precision, reason = choose_precision(m)
    assert precision == "fp32" and "accuracy check" in reason


# ---------------------------------------------------------------------------------------------
# the cached decision
# ---------------------------------------------------------------------------------------------

def test_auto_measures_once_then_reads_the_cache(cache: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    fake = probe(monkeypatch, FAST_BF16)
    first = resolve_precision("auto", CPU)
    assert (first.precision, first.autocast_dtype) == ("bf16", torch.bfloat16)
    assert first.reason.startswith("auto: bf16 measured 2.00x")
    files = list((cache / "runtime").glob("*.json"))
    assert len(files) == 1
    saved = json.loads(files[0].read_text())
    assert saved["precision"] == "bf16" and saved["key"]["threads"] == torch.get_num_threads()

    new_process()
    fake.measurement = SLOW_BF16  # would flip the answer, if it were asked
    again = cpu_precision()
    assert again.precision == "bf16" and again.from_cache and fake.calls == 1
    remeasured = cpu_precision(remeasure=True)
    assert remeasured.precision == "fp32" and not remeasured.from_cache and fake.calls == 2
    new_process()
    assert cpu_precision().precision == "fp32"  # the new measurement replaced the old


@pytest.mark.parametrize("change", ["cpu", "torch", "threads", "kernel env"])
def test_a_decision_from_another_machine_is_not_used(cache: Path, change: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    fake = probe(monkeypatch, FAST_BF16)
    assert cpu_precision().precision == "bf16"
    new_process()
    if change == "cpu":
        monkeypatch.setattr(runtime, "cpu_info", lambda: CpuInfo("Other CPU", frozenset()))
    elif change == "torch":
        monkeypatch.setattr(torch, "__version__", "9.9.9")
    elif change == "threads":
        threads = torch.get_num_threads()
        torch.set_num_threads(threads + 1)  # restored below
    else:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_VNNI")
    try:
        fake.measurement = SLOW_BF16
        assert cpu_precision().precision == "fp32"
        assert fake.calls == 2
        assert len(list((cache / "runtime").glob("*.json"))) == 2  # both machines keep theirs
    finally:
        if change == "threads":
            torch.set_num_threads(threads)


def test_a_cache_file_made_for_another_key_is_ignored(cache: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A file under this machine's name whose recorded key differs (copied, or a hash clash)."""
    fake = probe(monkeypatch, FAST_BF16)
    path = cpu_precision().path
    saved = json.loads(path.read_text())
    saved["key"]["cpu"] = "Other CPU"
    path.write_text(json.dumps(saved))
    new_process()
    fake.measurement = SLOW_BF16
    assert cpu_precision().precision == "fp32" and fake.calls == 2
    assert json.loads(path.read_text())["key"]["cpu"] != "Other CPU"


@pytest.mark.parametrize("content", ["{not json", '{"precision": "bf16"}', "", '["a list"]',
                                     None])
def test_a_corrupt_cache_is_measured_again(cache: Path, monkeypatch: pytest.MonkeyPatch,
                                           caplog: pytest.LogCaptureFixture,
                                           content: str | None) -> None:
    fake = probe(monkeypatch, FAST_BF16)
    path = cpu_precision().path
    if content is None:  # a whole record with an impossible precision
        saved = json.loads(path.read_text())
        saved["precision"] = "fp16"
        content = json.dumps(saved)
    path.write_text(content)
    new_process()
    fake.measurement = SLOW_BF16
    with caplog.at_level(logging.WARNING, logger="hpsearch.trainer.runtime"):
        decision = cpu_precision()
    assert decision.precision == "fp32" and fake.calls == 2
    assert any("measuring again" in r.getMessage() for r in caplog.records)
    assert json.loads(path.read_text())["precision"] == "fp32"  # repaired


def test_an_unwritable_cache_only_warns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")  # fails even for root
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    monkeypatch.setattr(runtime, "_DECIDED", {})
    fake = probe(monkeypatch, FAST_BF16)
    with caplog.at_level(logging.WARNING, logger="hpsearch.trainer.runtime"):
        assert resolve_precision("auto", CPU).precision == "bf16"
    assert any("not cached" in r.getMessage() for r in caplog.records)
    new_process()
    assert cpu_precision().precision == "bf16" and fake.calls == 2  # nothing kept: measured


# ---------------------------------------------------------------------------------------------
# forced precisions, and what the trainer reports
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("forced", "measured"), [("fp32", FAST_BF16), ("bf16", SLOW_BF16)])
def test_a_forced_precision_is_never_overridden(cache: Path, monkeypatch: pytest.MonkeyPatch,
                                                forced: str, measured: Measurement) -> None:
    fake = probe(monkeypatch, measured)
    setup = resolve_precision(forced, CPU)
    assert (setup.precision, setup.reason) == (forced, "set explicitly")
    data = load_train_val(DataOptions(dataset="synthetic", synthetic_size=200), seed=0)
    params = TrialParams(patch_size=7, hidden_dim=16, token_mlp_dim=8, channel_mlp_dim=32,
                         batch_size=64, epochs=1, precision=forced)
    result = fit(params, data, device="cpu")
    assert result.setup == setup  # known before the first epoch
    result.run_to_end()
    assert fake.calls == 0  # nothing was even measured


def test_train_reports_what_auto_chose(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    probe(monkeypatch, SLOW_BF16)
    data = load_train_val(DataOptions(dataset="synthetic", synthetic_size=200), seed=0)
    params = TrialParams(patch_size=7, hidden_dim=16, token_mlp_dim=8, channel_mlp_dim=32,
                         batch_size=64, epochs=1)
    result = fit(params, data, device="cpu").run_to_end()
    assert (result.setup.device, result.setup.precision, result.setup.threads) == (
        "cpu", "fp32", torch.get_num_threads())
    assert result.setup.reason.startswith("auto: bf16 measured 0.20x")


def test_the_probe_leaves_the_random_state_alone() -> None:
    """The real probe (not faked): sane numbers, and a run's results do not depend on whether
    it was the one that measured."""
    torch.manual_seed(123)
    before = torch.get_rng_state()
    m = runtime.measure_cpu(batch=8, steps=1)
    assert torch.equal(torch.get_rng_state(), before)
    assert m.fp32_step_s > 0 and m.bf16_step_s > 0
    assert choose_precision(m)[0] in ("fp32", "bf16")
    assert abs(m.bf16_loss - m.fp32_loss) < 0.05 * m.fp32_loss  # same weights, same batch


# ---------------------------------------------------------------------------------------------
# hpsearch info, as a user runs it
# ---------------------------------------------------------------------------------------------

def info(*args: str, cache_home: Path) -> subprocess.CompletedProcess[str]:
    """`hpsearch info ARGS`; its stderr lists what it imported (-X importtime)."""
    env = {**os.environ, "XDG_CACHE_HOME": str(cache_home)}
    env.pop("HPSEARCH_DEBUG", None)
    return subprocess.run([sys.executable, "-X", "importtime", "-m", "hpsearch", "info",
                           "--threads", "1", *args],
                          env=env, capture_output=True, text=True, timeout=600)


def imported_torch(run: subprocess.CompletedProcess[str]) -> bool:
    return any(line.rsplit("|", 1)[-1].strip() == "torch" for line in run.stderr.splitlines())


def test_info_measures_once_and_then_shows_the_cached_decision(tmp_path: Path) -> None:
    first = info("--format", "json", cache_home=tmp_path)
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert report["precision"] in ("fp32", "bf16") and report["device"] == "cpu"
    assert set(report["cpu_flags"]) == set(CPU_FLAGS)
    assert report["measurement"]["from_cache"] is False
    assert Path(report["cache"]).is_file()
    assert Path(report["cache"]).is_relative_to(tmp_path / "hpsearch")

    second = info(cache_home=tmp_path)
    assert second.returncode == 0, second.stderr
    lines = dict(line.split(":", 1) for line in second.stdout.splitlines())
    assert lines["precision"].split()[0] == report["precision"]
    assert "cached" in lines["measured"] and "measured now" not in lines["measured"]
    assert lines["cached in"].strip() == report["cache"]
    assert imported_torch(first) and not imported_torch(second)  # the answer kept, shown again
    assert json.loads(info("-f", "json", cache_home=tmp_path).stdout) == {
        **report, "measurement": {**report["measurement"], "from_cache": True}}

    Path(report["cache"]).unlink()  # the decision gone: measured again, not the old answer
    third = info("-f", "json", cache_home=tmp_path)
    assert imported_torch(third) and json.loads(third.stdout)["measurement"]["from_cache"] is False
