"""`hpsearch train` end to end: in a subprocess as a user runs it, and in-process through the
CLI entry point for the many bad-input cases."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import hps

SMALL = ["--set", "patch_size=7", "--set", "hidden_dim=32", "--set", "channel_mlp_dim=64"]
EPOCH_LINE = re.compile(r"^epoch +(\d+) +train loss \d+\.\d+ acc \d\.\d+ +val loss \d+\.\d+ "
                        r"acc \d\.\d+ ")


def hpsearch(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "HPSEARCH_DEBUG"}
    return subprocess.run([sys.executable, "-m", "hpsearch", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_train_synthetic_prints_one_line_per_epoch(tmp_path: Path) -> None:
    proc = hpsearch("train", "--dataset", "synthetic", "--epochs", "2", "--threads", "1",
                    *SMALL, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    epochs = [int(m.group(1)) for m in map(EPOCH_LINE.match, lines) if m]
    assert epochs == [1, 2]
    assert len(lines) == 3 and lines[-1].startswith("best val acc ")
    assert "Traceback" not in proc.stderr
    # one line says what the run uses; "auto" was decided for this machine
    assert re.search(r"^running on cpu, (fp32|bf16) \(auto: .*\), 1 thread$", proc.stderr,
                     re.MULTILINE), proc.stderr


def test_train_keeps_a_forced_precision(tmp_path: Path) -> None:
    proc = hpsearch("train", "--dataset", "synthetic", "--epochs", "1", "--threads", "1",
                    "--set", "precision=bf16", *SMALL, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "running on cpu, bf16 (set explicitly), 1 thread\n" in proc.stderr
    assert list(tmp_path.iterdir()) == []  # no database or other files for a plain run


def test_train_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    ckpt = tmp_path / "run.pt"
    args = ["train", "--dataset", "synthetic", "--threads", "1", "--checkpoint", str(ckpt),
            *SMALL]
    first = hpsearch(*args, "--epochs", "1", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    second = hpsearch(*args, "--epochs", "2", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    epochs = [int(m.group(1)) for m in map(EPOCH_LINE.match, second.stdout.splitlines()) if m]
    assert epochs == [2]  # epoch 1 came from the checkpoint


@pytest.mark.parametrize(("setting", "fragment"), [
    ("patch_size=5", "patch_size 5 does not divide"),
    ("optimizer=foo", "unknown optimizer 'foo'"),
    ("nosuchkey=1", "unknown parameter(s): nosuchkey"),
    ("lr=-1", "lr must be positive"),
])
def test_bad_input_is_one_line_and_exit_code_2(tmp_path: Path, setting: str,
                                               fragment: str) -> None:
    proc = hpsearch("train", "--dataset", "synthetic", "--epochs", "1", "--set", setting,
                    cwd=tmp_path)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1, proc.stderr
    assert err[0].startswith("hpsearch: error:")
    assert fragment in err[0]
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


@pytest.mark.parametrize(("settings", "fragment"), [
    (["gamma=1"], "gamma must be in (0, 1), got 1.0"),
    (["gamma=1.5"], "gamma must be in (0, 1), got 1.5"),
    (["gamma=0"], "gamma must be in (0, 1), got 0.0"),
    (["gamma=nan"], "gamma must be a finite number, got nan"),
    (["plateau_patience=-1"], "plateau_patience must not be negative, got -1"),
    (["plateau_cooldown=-2"], "plateau_cooldown must not be negative, got -2"),
    (["plateau_threshold=-0.1"], "plateau_threshold must not be negative"),
    (["min_lr=-1e-5"], "min_lr must not be negative"),
    (["min_lr=nan"], "min_lr must be a finite number, got nan"),
    (["beta1=1.0"], "beta1 must be in [0, 1), got 1.0"),
    (["beta2=-0.1"], "beta2 must be in [0, 1), got -0.1"),
    (["beta2=nan"], "beta2 must be a finite number, got nan"),
    (["eps=0"], "eps must be positive, got 0.0"),
    (["eps=nan"], "eps must be a finite number, got nan"),
    (["plateau_metric=train_loss"], "unknown plateau_metric 'train_loss'"),
    (["optimizer=sgd", "nesterov=true"], "nesterov needs momentum > 0"),
    (["optimizer=sgd", "momentum=0", "nesterov=true"], "nesterov needs momentum > 0"),
    (["scheduler=plateau", "plateau_metric=val_acc", "plateau_mode=min"],
     "plateau_mode 'min' contradicts plateau_metric 'val_acc'"),
])
def test_bad_scheduler_and_optimiser_options_are_one_line_errors(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        settings: list[str], fragment: str) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HPSEARCH_DEBUG", raising=False)
    args = [arg for setting in settings for arg in ("--set", setting)]
    code, out, err = hps(capsys, monkeypatch, "train", "--dataset", "synthetic", "--epochs", "1",
                         *args)
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("hpsearch: error:") and fragment in lines[0], lines[0]
    assert list(tmp_path.iterdir()) == []


def test_good_scheduler_and_optimiser_options_train(capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    # the same keys with valid values pass through the same path (the errors above are not
    # raised for every value of these keys)
    monkeypatch.chdir(tmp_path)
    settings = ["optimizer=sgd", "momentum=0.9", "nesterov=true", "scheduler=plateau",
                "plateau_metric=val_acc", "plateau_mode=max", "plateau_patience=0",
                "plateau_cooldown=1", "plateau_threshold=0.01", "min_lr=1e-5", "gamma=0.5",
                "beta1=0.5", "beta2=0.9", "eps=1e-6"]
    args = [arg for setting in settings for arg in ("--set", setting)]
    code, out, err = hps(capsys, monkeypatch, "train", "--dataset", "synthetic", "--epochs", "1",
                         "--threads", "1", *SMALL, *args)
    assert code == 0, err
    assert out.strip().splitlines()[-1].startswith("best val acc ")
