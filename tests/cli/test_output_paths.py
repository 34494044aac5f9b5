"""`-o PATH` of export and report: atomic writes to regular files only, `-` for standard output.
Real device nodes, FIFOs, symlinks and folders; each refusal leaves the path as it was."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.helpers import hps
from tests.recorded_study import RecordedStudy, build_recorded_study

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> RecordedStudy:
    return build_recorded_study(f"sqlite:///{tmp_path_factory.mktemp('out') / 'results.db'}")


def device_node(folder: Path) -> Path:
    """A character device like /dev/null (1, 3) where we may create one (root), else a FIFO:
    either is a file that must never be replaced by a regular one. Not /dev/null itself: a
    regression would replace the machine's /dev/null."""
    path = folder / "null"
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except PermissionError:
        os.mkfifo(path)
    return path


def refused(capsys, monkeypatch, recorded: RecordedStudy, *args: str) -> str:
    code, out, err = hps(capsys, monkeypatch, *args, "--db", recorded.url)
    assert code == 2 and out == ""
    assert err.startswith("hpsearch: error: refusing to write") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("command", [("export",), ("report",)])
def test_device_node_is_refused_and_left_alone(capsys, monkeypatch, recorded: RecordedStudy,
                                               tmp_path: Path, command: tuple[str, ...]) -> None:
    node = device_node(tmp_path)
    before = node.lstat()
    refused(capsys, monkeypatch, recorded, *command, recorded.name, "-o", str(node))
    after = node.lstat()
    assert not stat.S_ISREG(after.st_mode) and after.st_ino == before.st_ino


@pytest.mark.parametrize("command", [("export",), ("report",)])
def test_symlink_out_of_its_folder_is_refused(capsys, monkeypatch, recorded: RecordedStudy,
                                              tmp_path: Path, command: tuple[str, ...]) -> None:
    link = tmp_path / "out.csv"
    link.symlink_to("/dev/stdout")
    err = refused(capsys, monkeypatch, recorded, *command, recorded.name, "-o", str(link))
    assert "outside its folder" in err
    assert link.is_symlink() and os.readlink(link) == "/dev/stdout"
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "keep.csv").write_text("keep\n")
    link.unlink()
    link.symlink_to(other / "keep.csv")
    refused(capsys, monkeypatch, recorded, *command, recorded.name, "-o", str(link))
    assert (other / "keep.csv").read_text() == "keep\n"


@pytest.mark.parametrize("command", [("export",), ("report",)])
def test_directory_is_refused(capsys, monkeypatch, recorded: RecordedStudy, tmp_path: Path,
                              command: tuple[str, ...]) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "inside").write_text("x")
    err = refused(capsys, monkeypatch, recorded, *command, recorded.name, "-o", str(folder))
    assert "directory" in err
    assert [p.name for p in folder.iterdir()] == ["inside"]


def test_symlink_within_its_folder_is_followed(capsys, monkeypatch, recorded: RecordedStudy,
                                               tmp_path: Path) -> None:
    target = tmp_path / "trials-3.csv"
    target.write_text("old\n")
    link = tmp_path / "latest.csv"
    link.symlink_to("trials-3.csv")
    code, _, err = hps(capsys, monkeypatch, "export", recorded.name, "-o", str(link),
                       "--db", recorded.url)
    assert code == 0, err
    assert link.is_symlink() and target.read_text().startswith("number,")


def test_dash_writes_to_standard_output(capsys, monkeypatch, recorded: RecordedStudy,
                                        tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    code, default, _ = hps(capsys, monkeypatch, "export", recorded.name, "--db", recorded.url)
    code_dash, dash, _ = hps(capsys, monkeypatch, "export", recorded.name, "-o", "-",
                             "--db", recorded.url)
    assert code == code_dash == 0 and dash == default and dash.startswith("number,")
    code, page, err = hps(capsys, monkeypatch, "report", recorded.name, "-o", "-",
                          "--db", recorded.url)
    assert code == 0, err
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert list(tmp_path.iterdir()) == []  # no file named "-"


def test_one_atomic_write_helper() -> None:
    """Every file is written through hpsearch.files: no other module renames files into place."""
    others = [str(p.relative_to(ROOT)) for folder in ("hpsearch", "bench")
              for p in (ROOT / folder).rglob("*.py")
              if "os.replace(" in p.read_text() and p.name != "files.py"]
    assert others == []


def test_train_checkpoint_on_a_device_is_refused_before_training(capsys, monkeypatch,
                                                                 tmp_path: Path) -> None:
    node = device_node(tmp_path)
    code, out, err = hps(capsys, monkeypatch, "train", "--dataset", "synthetic", "--epochs", "1",
                         "--checkpoint", str(node))
    assert code == 2 and out == "" and err.startswith("hpsearch: error: refusing to write")
    assert not stat.S_ISREG(node.lstat().st_mode)
