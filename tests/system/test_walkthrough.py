"""README's "A day with hpsearch": every line of its walk-through, run as written in a fresh
folder (the default SQLite database there) on the shipped synthetic studies. Only the dashboard's
port is swapped for a free one, and the dashboard is stopped with Ctrl-C once it serves."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]


def walkthrough() -> list[list[str]]:
    """The commands of README's walk-through block, comments dropped."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- walkthrough -->\n```bash\n(.*?)```", text, re.S)
    assert block, "README has no walk-through block"
    return [shlex.split(line, comments=True) for line in block.group(1).splitlines()
            if line.strip()]


def test_walkthrough_is_the_one_documented() -> None:
    commands = walkthrough()
    used = {c[1] for c in commands}
    assert all(c[0] == "hpsearch" for c in commands)
    assert {"run", "studies", "trials", "best", "show", "compare", "enqueue", "report",
            "evaluate", "dashboard"} <= used


def test_readme_walkthrough_runs(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "studies", tmp_path / "studies")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPSEARCH_")}
    env |= {"COLUMNS": "200", "XDG_CACHE_HOME": str(tmp_path / "cache"),
            "PYTHONPATH": str(ROOT)}
    for command in walkthrough():
        args = [sys.executable, "-m", "hpsearch", *command[1:]]
        if command[1] == "dashboard":
            pytest.importorskip("optuna_dashboard")
            _dashboard(args, tmp_path, env)
            continue
        proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, f"{shlex.join(command)}:\n{proc.stdout}\n{proc.stderr}"
        _shows_a_search(command[1:], proc.stdout)
    assert (tmp_path / "try-report.html").stat().st_size > 0
    assert (tmp_path / "hpsearch.db").exists()


def _shows_a_search(command: list[str], out: str) -> None:
    """The toy study does not saturate: the day shows what a search is about."""
    if command[:2] == ["show", "try"]:  # a pruned trial, and the line that says why
        assert "pruned: pruned at epoch" in out, out
    elif command[:2] == ["best", "try-small"]:  # a trade-off: several trials, one marked
        found = re.search(r"(\d+) of \d+ complete trials are on the front", out)
        assert found and int(found.group(1)) >= 2 and "*" in out, out
    elif command[:2] == ["evaluate", "try-small"]:
        found = re.search(r"test acc \(final\): (\d\.\d+)", out)
        assert found and float(found.group(1)) < 1.0, out


def _dashboard(args: list[str], cwd: Path, env: dict[str, str]) -> None:
    port = free_port()
    args[args.index("--port") + 1] = str(port)
    server = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    url = f"http://127.0.0.1:{port}/api/studies"

    def studies() -> set[str]:  # each response read in full, so the server is free again
        with urllib.request.urlopen(url, timeout=5) as response:
            return {s["study_name"] for s in json.load(response)["study_summaries"]}

    try:
        wait_for(lambda: bool(studies()), 60, "the dashboard")
        assert studies() == {"try", "try-small"}
    finally:
        server.send_signal(signal.SIGINT)
        out, _ = server.communicate(timeout=30)
    assert server.returncode == 0, out
