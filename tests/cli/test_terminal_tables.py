"""`trials` and `studies` on a real terminal (a pty of 100 and 160 columns): no line is wider
than the terminal, the columns left out are named; files and pipes keep every column."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios

import pytest

from tests.helpers import hps
from tests.recorded_study import build_recorded_study

NAME = "wide-study"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('tty') / 'results.db'}"
    build_recorded_study(url, NAME)
    return url


def on_terminal(columns: int, *args: str) -> list[str]:
    """The lines `hpsearch ARGS` writes to a pseudo-terminal `columns` wide."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env.update(TERM="xterm-256color", NO_COLOR="1")
    process = subprocess.Popen([sys.executable, "-m", "hpsearch", *args], stdout=follower,
                               stderr=follower, env=env)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed: the program ended
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert process.wait(timeout=60) == 0, b"".join(chunks).decode()
    text = ANSI.sub("", b"".join(chunks).decode())  # bold and the like: not printed characters
    return text.replace("\r\n", "\n").splitlines()


@pytest.mark.parametrize("columns", [100, 160])
@pytest.mark.parametrize("command", ["trials", "studies"])
def test_tables_fit_the_terminal(recorded: str, columns: int, command: str) -> None:
    args = [command, NAME] if command == "trials" else [command]
    lines = on_terminal(columns, *args, "--db", recorded)
    assert lines and max(len(line) for line in lines) <= columns, "\n".join(lines)
    if command == "trials":
        assert any("trial" in line and "state" in line for line in lines)  # the header
        if columns == 100:  # too narrow for every parameter: the note names what is missing
            assert "left out to fit 100 columns" in " ".join(lines)


def test_all_and_columns_choose_what_a_terminal_shows(recorded: str) -> None:
    wide = on_terminal(100, "trials", NAME, "--all", "--db", recorded)
    assert max(len(line) for line in wide) > 100  # every column, as asked
    picked = on_terminal(100, "trials", NAME, "--columns", "number,state,lr", "--db", recorded)
    header = next(line for line in picked if "┃" in line)
    assert [cell.strip() for cell in header.split("┃")[1:-1]] == ["trial", "state", "lr"]


def test_a_pipe_keeps_every_column(recorded: str, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, _ = hps(capsys, monkeypatch, "trials", NAME, "--db", recorded)
    assert code == 0 and "left out" not in out and "reason" in out
    code, out, _ = hps(capsys, monkeypatch, "trials", NAME, "-f", "tsv", "--db", recorded)
    header, *rows = out.splitlines()
    assert header.split("\t")[:3] == ["number", "state", "best_val_acc"]
    assert "reason" in header.split("\t") and all(len(r.split("\t")) ==
                                                   len(header.split("\t")) for r in rows)
    code, _, err = hps(capsys, monkeypatch, "trials", NAME, "--columns", "nope", "--db",
                       recorded)
    assert code == 2 and "unknown column(s) nope" in err


def test_failed_and_pruned_trials_show_their_reason(recorded: str,
                                                    capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, _ = hps(capsys, monkeypatch, "trials", NAME, "--state", "pruned", "-f", "json",
                       "--db", recorded)
    assert code == 0
    rows = json.loads(out)
    assert rows and all(r["reason"] for r in rows)
