"""The wheel alone carries hpsearch, its migrations and its example studies: built from the
sources, installed into a fresh venv outside the checkout, it creates its tables, runs a
one-trial study and writes an example study (`hpsearch init`).

The venv borrows the dependencies (torch is 5 GB) from the interpreter running the tests through
a .pth file, which appends that site-packages AFTER the venv's own: hpsearch itself can only come
from the wheel (the test checks), and nothing from the checkout is on the path (cwd elsewhere,
PYTHONPATH unset).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.study_files import write_tiny_study

ROOT = Path(__file__).resolve().parents[2]
# what a build reads; copied so the build leaves nothing in the checkout
SOURCES = ("pyproject.toml", "README.md", "hpsearch", "alembic", "studies", "examples")
pytestmark = pytest.mark.slow


def run(*args: str | Path, cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, f"{args}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_the_installed_wheel_migrates_and_runs_a_study(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith("HPSEARCH_")}
    source = tmp_path / "src"
    source.mkdir()
    for name in SOURCES:
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        copy(ROOT / name, source / name)
    wheels = tmp_path / "wheels"
    run(sys.executable, "-m", "pip", "wheel", source, "--no-deps", "--no-build-isolation",
        "-q", "-w", wheels, cwd=tmp_path, env=env)
    (wheel,) = wheels.glob("hpsearch-*.whl")

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path, env=env)
    python = venv / "bin" / "python"
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                    cwd=tmp_path, env=env).strip())
    (site / "borrowed-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q", wheel,
        cwd=tmp_path, env=env)

    work = tmp_path / "elsewhere"
    work.mkdir()
    where = run(python, "-c", "import hpsearch.db.migrate as m; print(m.__file__); "
                "print(m.SCRIPT_LOCATION)", cwd=work, env=env).split()
    assert all(Path(p).is_relative_to(venv) for p in where), where  # the wheel's, not ROOT's
    assert Path(where[1]).name == "_alembic"

    hpsearch = venv / "bin" / "hpsearch"
    url = f"sqlite:///{work / 'results.db'}"
    out = run(hpsearch, "db", "upgrade", "--db", url, cwd=work, env=env)
    assert "upgraded from empty to" in out and "(head)" in out
    study = write_tiny_study(work, n_trials=1, epochs=1)
    run(hpsearch, "run", study, "--db", url, "--device", "cpu", "--top", "0", cwd=work, env=env)
    out = run(hpsearch, "trials", "tiny", "--db", url, "--format", "csv", cwd=work, env=env)
    assert out.splitlines()[1].startswith("0,complete,"), out
    out = run(hpsearch, "db", "check", "--db", url, cwd=work, env=env)
    assert "schema matches the models" in out
    out = run(hpsearch, "init", "--example", "cnn", cwd=work, env=env)
    assert "wrote cnn-fashion-mnist.toml, cnn.py" in out
    assert (work / "cnn.py").read_text().startswith('"""A small CNN')
