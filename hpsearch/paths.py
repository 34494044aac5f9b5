"""Where our files go: a study's folder (named safely after it), the user's cache folder, and
the one way to write a file atomically.

No torch here: `hpsearch run` needs these names before its workers start, and importing torch
would delay them by a second.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from hpsearch.errors import HpsearchError


def cache_dir() -> Path:
    """Our folder in the user's cache: $XDG_CACHE_HOME/hpsearch, else ~/.cache/hpsearch."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hpsearch"


@contextmanager
def atomic_text(path: Path) -> Iterator[TextIO]:
    """Open a temporary file next to `path` for writing; rename it over `path` on success, so
    a failed write never leaves a half-written file behind. Errors become HpsearchError."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise HpsearchError(f"cannot write {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as out:
            yield out
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual mode
        os.replace(tmp, path)
    except OSError as exc:
        os.unlink(tmp)
        raise HpsearchError(f"cannot write {path}: {exc.strerror}") from None
    except BaseException:
        os.unlink(tmp)
        raise


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def study_slug(name: str) -> str:
    """A file-system-safe folder name for a study; never '.', '..' or a path.

    A name that is already safe is its own slug; any other gets a hash of the name appended,
    so two studies (say "my study" and "my_study") never share a checkpoint folder."""
    slug = re.sub(r"[^A-Za-z0-9_.-]", "_", name).strip(".") or "study"
    if slug != name or len(slug) > 120:
        digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:12]
        slug = f"{slug[:100]}-{digest}"
    return slug


def checkpoint_path(root: str | Path, study_name: str, number: int) -> Path:
    base = Path(root).resolve() / study_slug(study_name)
    path = (base / f"trial-{number}.pt").resolve()
    if not path.is_relative_to(base):  # defence in depth; the slug already prevents it
        raise ValueError(f"checkpoint path escapes {base}")
    return path
