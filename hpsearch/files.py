"""Writing files: atomically, and only where a regular file belongs. The one home for both.

Every file hpsearch writes (exports, reports, checkpoints, the dataset cache) goes into a
temporary file beside the target and is renamed over it, so a crash or a full disk never leaves
a half-written file behind, and a reader never sees one.

What may be replaced: a regular file, or nothing. A directory, a device node (/dev/null), a FIFO
or a socket is refused: renaming over /dev/null would replace the device with a file for every
program on the machine. A symlink is followed only when it points into its own folder (a
`latest.html -> report-3.html` link keeps working and the file it names is replaced); a symlink
out of its folder (to /dev/stdout, to another user's file) is refused, since writing through
it would change a file that the user never named. No torch here.
"""

from __future__ import annotations

import os
import stat
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Literal

from hpsearch.errors import HpsearchError

STDOUT = "-"  # `-o -`: write to standard output instead of a file


def writable_target(path: str | Path) -> Path:
    """The regular file that writing `path` replaces (a symlink into its own folder resolved);
    raises HpsearchError, naming the path, for anything else."""
    if isinstance(path, str) and path.endswith(("/", os.sep)):  # Path() would drop the slash
        raise HpsearchError(f"refusing to write {path}: a name ending in / names a folder")
    path = Path(path)
    target = path
    if path.is_symlink():
        try:
            target = path.resolve(strict=False)
        except (OSError, RuntimeError):  # a symlink loop
            raise HpsearchError(f"refusing to write {path}: a symlink that leads nowhere") from None
        if target.parent != path.parent.resolve():
            raise HpsearchError(f"refusing to write {path}: it is a symlink to {target}, "
                                "outside its folder")
    try:
        mode = target.stat().st_mode
    except FileNotFoundError:
        if not target.parent.is_dir():
            raise HpsearchError(f"cannot write {path}: folder {target.parent} does not "
                                "exist") from None
        return target
    except OSError as exc:
        raise HpsearchError(f"cannot write {path}: {exc.strerror}") from None
    if stat.S_ISDIR(mode):
        raise HpsearchError(f"refusing to write {path}: it is a directory")
    if not stat.S_ISREG(mode):
        raise HpsearchError(f"refusing to write {path}: it is not a regular file (a device, "
                            "pipe or socket)")
    return target


def writable_folder(path: str | Path, what: str) -> Path:
    """Check that files can be written in folder `path`, made with its parents where missing,
    before any work whose results would go there: a read-only disk or a path through a file is
    one line at the start, not a failed trial or lost final weights hours later. Nothing is
    created (a check that fails later must leave no folders behind): the nearest existing
    folder is tried. `what` names the files in the message ("checkpoints", "worker logs")."""
    folder = Path(path)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise HpsearchError(f"cannot write {what} to {folder}: {existing} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):  # unnamed: gone when closed
            pass
    except OSError as exc:
        raise HpsearchError(f"cannot write {what} to {folder}: "
                            f"{exc.strerror or exc}") from None
    return folder


@contextmanager
def atomic_write(path: str | Path, mode: Literal["w", "wb"] = "w") -> Iterator[IO[Any]]:
    """Open a temporary file beside `path` ("w": UTF-8 text, "wb": bytes); on success it is
    flushed to disk and renamed over `path`, on any error removed. OSError becomes
    HpsearchError naming the path (a full disk, a read-only folder)."""
    target = writable_target(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:
        raise HpsearchError(f"cannot write {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8", "newline": ""} if "b" not in mode
                                    else {})) as out:
            yield out
            out.flush()
            os.fsync(out.fileno())  # the rename must not reach the disk before the data
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual mode
        os.replace(tmp, target)
    except OSError as exc:
        os.unlink(tmp)
        raise HpsearchError(f"cannot write {path}: {exc.strerror}") from None
    except BaseException:
        os.unlink(tmp)
        raise


def move_into_place(source: Path, target: Path) -> None:
    """A complete file renamed over `target` (atomic on one file system): the one other
    rename besides `atomic_write`'s, for a file another step has already written whole."""
    os.replace(source, target)


@contextmanager
def output_text(path: str | Path) -> Iterator[IO[str]]:
    """An `-o PATH` option's destination: standard output for "-", else `atomic_write`."""
    if str(path) == STDOUT:
        yield sys.stdout
        sys.stdout.flush()
        return
    with atomic_write(path) as out:
        yield out


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current
