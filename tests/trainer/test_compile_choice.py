"""How `compile = "auto"` is decided: the rule against the run's length (with faked timings), the
short runs that never measure, the per-machine cache, and the trainer using the decision."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hpsearch.params import TrialParams
from hpsearch.trainer import compile_choice
from hpsearch.trainer.compile_choice import (
    COMPILE_MARGIN,
    PROBE_BATCH,
    CompileMeasurement,
    choose_compile,
    compile_pays,
)
from hpsearch.trainer.data import Split, TrainValData
from hpsearch.trainer.loop import fit
from hpsearch.trainer.model import matmul_flops_per_image

CPU = torch.device("cpu")
IMAGE = (1, 28, 28)
# eager 100 ms per default step of 256 images, compiled 80 ms (20% saved), a 20 s compile
GAIN = CompileMeasurement(eager_step_s=0.100, compiled_step_s=0.080, compile_s=20.0,
                          precision="bf16")
NO_GAIN = CompileMeasurement(eager_step_s=0.100, compiled_step_s=0.101, compile_s=20.0,
                             precision="bf16")


class FakeProbe:
    def __init__(self, measurement: CompileMeasurement) -> None:
        self.measurement, self.calls = measurement, 0

    def __call__(self, precision: str) -> CompileMeasurement:
        self.calls += 1
        return self.measurement


@pytest.fixture
def probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeProbe:
    """An empty cache, an empty per-process memory, and a faked measurement with GAIN."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(compile_choice, "_MEASURED", {})
    fake = FakeProbe(GAIN)
    monkeypatch.setattr(compile_choice, "measure_compile", fake)
    return fake


def steps_to_repay(m: CompileMeasurement) -> float:
    """Default-Mixer steps of PROBE_BATCH images whose saving is COMPILE_MARGIN compiles."""
    return COMPILE_MARGIN * m.compile_s / (m.eager_step_s * m.saving)


def test_compile_only_where_the_saving_repays_the_compile_with_margin() -> None:
    params = TrialParams()
    enough = int(steps_to_repay(GAIN) * PROBE_BATCH * 1.01)  # 2,000 steps: 512,000 images
    assert compile_pays(params, IMAGE, enough, GAIN)[0]
    assert not compile_pays(params, IMAGE, int(enough * 0.98 / 1.01), GAIN)[0]
    assert not compile_pays(params, IMAGE, 100 * enough, NO_GAIN)[0]  # slower compiled: never


def test_a_bigger_model_repays_sooner_but_compiles_longer() -> None:
    one, four = TrialParams(), TrialParams(num_blocks=4)
    flops = matmul_flops_per_image(four, IMAGE) / matmul_flops_per_image(one, IMAGE)
    needed = steps_to_repay(GAIN) * PROBE_BATCH * 4 / flops  # 4 graphs to compile
    assert 3.5 < flops < 4  # so the 4-block model needs a little more than the 1-block one
    assert compile_pays(four, IMAGE, int(1.05 * needed), GAIN)[0]
    assert not compile_pays(four, IMAGE, int(0.95 * needed), GAIN)[0]


def test_explicit_settings_win_and_gpus_are_not_measured(probe: FakeProbe) -> None:
    long_run = 100_000_000
    assert choose_compile(TrialParams(compile="on"), IMAGE, 10, CPU, "fp32") == (
        True, "set explicitly")
    assert choose_compile(TrialParams(compile="off"), IMAGE, long_run, CPU, "fp32")[0] is False
    assert not choose_compile(TrialParams(), IMAGE, long_run, torch.device("cuda"), "bf16")[0]
    # a model of the user's own: no FLOPs to scale the measurement by
    compiled, reason = choose_compile(TrialParams(model="mine:build"), IMAGE, long_run, CPU, "bf16")
    assert not compiled and "of your own" in reason
    assert probe.calls == 0


def test_short_runs_neither_measure_nor_compile(probe: FakeProbe) -> None:
    # 10 epochs of the default Mixer on 54,000 images: a search trial
    compiled, reason = choose_compile(TrialParams(), IMAGE, 540_000, CPU, "bf16")
    assert not compiled and "too short" in reason
    assert probe.calls == 0


def test_a_long_run_measures_once_per_machine_then_reads_the_cache(probe: FakeProbe) -> None:
    long_run = 100 * 54_000
    compiled, reason = choose_compile(TrialParams(), IMAGE, long_run, CPU, "bf16")
    assert compiled and "20%" in reason and probe.calls == 1
    compile_choice._MEASURED.clear()  # a new process: reads the file
    assert choose_compile(TrialParams(), IMAGE, long_run, CPU, "bf16")[0]
    assert probe.calls == 1
    choose_compile(TrialParams(), IMAGE, long_run, CPU, "fp32")  # another precision: its own
    assert probe.calls == 2


def test_the_trainer_follows_the_decision(probe: FakeProbe,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch, "compile", lambda model: model)  # keep the test fast
    images = torch.randn(64, 1, 28, 28)
    data = TrainValData(train=Split(images, torch.randint(0, 10, (64,))),
                        val=Split(images[:16], torch.randint(0, 10, (16,))),
                        dataset="synthetic", mean=0.0, std=1.0)
    short = fit(TrialParams(epochs=1, batch_size=32, precision="fp32"), data, device="cpu")
    assert not short.compiled
    # a long run (by its epochs; built, not run) is compiled, and its last partial batch is
    # dropped so that the compiled model sees one shape
    long = fit(TrialParams(epochs=100_000, batch_size=48, precision="fp32"), data, device="cpu")
    assert long.compiled and long.drop_last and long.steps_per_epoch == 1


def test_images_of_another_size_are_costed_by_their_own_shape(probe: FakeProbe) -> None:
    """A patch size that tiles the data's 16x16 images but not Fashion-MNIST's 28x28 trains
    (the cost estimate once assumed 28x28 and failed every such trial)."""
    images = torch.randn(32, 3, 16, 16)
    data = TrainValData(train=Split(images, torch.randint(0, 10, (32,))),
                        val=Split(images[:8], torch.randint(0, 10, (8,))),
                        dataset="photos", mean=0.0, std=1.0)
    params = TrialParams(patch_size=8, epochs=1, batch_size=16, precision="fp32")
    run = fit(params, data, device="cpu")
    assert not run.compiled and "too short" in run.compile_reason
    big = matmul_flops_per_image(params, (3, 16, 16))
    assert compile_choice.training_flops(params, (3, 16, 16), 10) == 3.0 * big * 10
