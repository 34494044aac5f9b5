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
from pathlib import Path

import pytest
from sqlalchemy import select, update

from hpsearch.db.engine import make_engine
from hpsearch.db.models import Study, Trial
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
    assert header_cells(picked) == ["trial", "state", "lr"]


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


def header_cells(lines: list[str]) -> list[str]:
    """The column titles, a title wrapped over several header lines joined again."""
    top = next(i for i, line in enumerate(lines) if "┏" in line)
    end = next(i for i, line in enumerate(lines) if "┡" in line)
    titles: list[str] = []
    for line in lines[top + 1:end]:
        pieces = [cell.strip() for cell in line.split("┃")[1:-1]]
        titles = titles or [""] * len(pieces)
        titles = [t + ("" if not t or t.endswith("_") or not p else " ") + p
                  for t, p in zip(titles, pieces, strict=True)]
    return titles


def ranked_params(url: str, name: str) -> list[str]:
    """The study's sampled parameters, the most important first, as the tables rank them."""
    from hpsearch.db.engine import make_engine
    from hpsearch.db.figure_queries import complete_params
    from hpsearch.db.queries import find_study
    from hpsearch.report.importance import by_importance, param_importances

    engine = make_engine(url)
    with engine.connect() as conn:
        study = find_study(conn, name)
        found, _how = param_importances(study.space, complete_params(conn, study))
    engine.dispose()
    assert found, "the recorded study's parameters must have importances"
    return by_importance(list(study.space), found)


def test_a_narrow_terminal_shows_the_objective_and_the_top_parameters(recorded: str) -> None:
    """80 columns: the trial, its state, the objective, the best mark and the three most
    important sampled parameters; 120 columns: every sampled parameter."""
    ranked = ranked_params(recorded, NAME)
    narrow = on_terminal(80, "trials", NAME, "--db", recorded)
    assert max(len(line) for line in narrow) <= 80, "\n".join(narrow)
    cells = header_cells(narrow)
    assert cells[:7] == ["trial", "state", "best val acc", "best", *ranked[:3]], cells
    assert "parameters by importance: PED-ANOVA" in " ".join(narrow)
    wide = header_cells(on_terminal(120, "trials", NAME, "--db", recorded))
    assert wide[:4 + len(ranked)] == ["trial", "state", "best val acc", "best", *ranked]


def test_a_narrow_terminal_keeps_every_objective(tmp_path: Path) -> None:
    """A multi-objective study: the second objective is never the column left out, and the
    three most important parameters still fit (the headers wrap at their words)."""
    url = f"sqlite:///{tmp_path / 'multi.db'}"
    build_recorded_study(url, "multi")
    engine = make_engine(url)
    with engine.begin() as conn:  # the same trials, ranked by two objectives
        spec = conn.execute(select(Study.spec)).scalar_one()
        conn.execute(update(Study).values(spec={**spec,
                                                "objectives": ["val_acc:max", "val_loss:min"]}))
    engine.dispose()
    narrow = on_terminal(80, "trials", "multi", "--db", url)
    assert max(len(line) for line in narrow) <= 80, "\n".join(narrow)
    cells = header_cells(narrow)
    ranked = ranked_params(url, "multi")  # and the three most important parameters after them
    assert cells[:8] == ["trial", "state", "best val acc", "best val loss", "best",
                         *ranked[:3]], cells


def test_tags_are_shown_and_filter_the_trials(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'tags.db'}"
    build_recorded_study(url, "tagged")
    db = ("--db", url)
    assert hps(capsys, monkeypatch, "tag", "tagged", "2", "keeper", "50%_lr", *db)[0] == 0
    assert hps(capsys, monkeypatch, "tag", "tagged", "4", "keeper", *db)[0] == 0
    assert hps(capsys, monkeypatch, "tag", "tagged", "6", "keep", *db)[0] == 0
    code, out, _ = hps(capsys, monkeypatch, "trials", "tagged", "--tag", "keeper", "-f",
                       "json", *db)
    assert code == 0, out
    assert sorted((r["number"], r["tags"]) for r in json.loads(out)) == [
        (2, ["keeper", "50%_lr"]), (4, ["keeper"])]
    # every tag given must be there; a tag is matched whole (not "keep" in "keeper"), and
    # LIKE's wildcards in a tag are plain characters
    code, out, _ = hps(capsys, monkeypatch, "trials", "tagged", "--tag", "keeper", "--tag",
                       "50%_lr", "-f", "csv", "--columns", "number", *db)
    assert out.split() == ["number", "2"]
    code, out, _ = hps(capsys, monkeypatch, "trials", "tagged", "--tag", "keep", "-f", "csv",
                       "--columns", "number", *db)
    assert out.split() == ["number", "6"]
    code, out, _ = hps(capsys, monkeypatch, "trials", "tagged", "--tag", "50_", *db)
    assert code == 0 and "no trials match" in out
    code, out, _ = hps(capsys, monkeypatch, "trials", "tagged", *db)
    assert "tags" in out and "keeper, 50%_lr" in out


def test_a_parameter_a_trial_did_not_use_is_blank(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'conditional.db'}"
    build_recorded_study(url, "conditional")
    engine = make_engine(url)
    with engine.begin() as conn:  # trial 0 did without dropout (a conditional parameter)
        params, sampled = conn.execute(select(Trial.params, Trial.sampled)
                                       .where(Trial.number == 0)).one()
        conn.execute(update(Trial).where(Trial.number == 0).values(
            params={k: v for k, v in params.items() if k != "dropout"},
            sampled=[k for k in sampled if k != "dropout"]))
    engine.dispose()
    code, out, _ = hps(capsys, monkeypatch, "trials", "conditional", "-f", "md", "--columns",
                       "number,dropout", "--sort", "number", "--db", url)
    assert code == 0, out
    rows = out.splitlines()
    at = rows.index("|---|---|")
    assert rows[at + 1:at + 3] == ["| 0 |  |", f"| 1 | {params_of(url, 1)['dropout']:.4g} |"]


def params_of(url: str, number: int) -> dict:
    engine = make_engine(url)
    with engine.connect() as conn:
        params = conn.execute(select(Trial.params).where(Trial.number == number)).scalar_one()
    engine.dispose()
    return params
