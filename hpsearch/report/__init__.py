"""Reports on recorded studies: terminal tables and exports (tables), Plotly figures (figures),
the self-contained HTML report (html). Nothing here imports torch.

Files are written atomically: into a temporary file beside the target, then renamed over it, so
a failed write never leaves a half-written export or report behind.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from hpsearch.errors import HpsearchError


@contextmanager
def atomic_text(path: Path) -> Iterator[TextIO]:
    """Open a temporary file next to `path` for writing; rename it over `path` on success."""
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
