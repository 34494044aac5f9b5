"""Where our files go: a study's folder (named safely after it) and the user's cache folder.

No torch here: `hpsearch run` needs these names before its workers start, and importing torch
would delay them by a second.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path


def cache_dir() -> Path:
    """Our folder in the user's cache: $XDG_CACHE_HOME/hpsearch, else ~/.cache/hpsearch."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hpsearch"


def study_slug(name: str) -> str:
    """A file-system-safe folder name for a study; never '.', '..' or a path.

    A name that is already safe is its own slug; any other gets a hash of the name appended,
    so two studies (say "my study" and "my_study") never share a checkpoint folder."""
    slug = re.sub(r"[^A-Za-z0-9_.-]", "_", name).strip(".") or "study"
    if slug != name or len(slug) > 120:
        digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:12]
        slug = f"{slug[:100]}-{digest}"
    return slug


def checkpoint_folder(root: str | Path, study_name: str) -> Path:
    """The folder of a study's checkpoints under `root` ([workers] checkpoint_dir)."""
    return Path(root).resolve() / study_slug(study_name)


def checkpoint_path(root: str | Path, study_name: str, number: int) -> Path:
    """A running trial's resume point (weights, optimiser, schedule, random state)."""
    return _in_folder(root, study_name, f"trial-{int(number)}.pt")


def model_path(root: str | Path, study_name: str, number: int) -> Path:
    """A trial's model at its peak epoch, kept for the study's best trials (a model file)."""
    return _in_folder(root, study_name, f"{MODEL_PREFIX}{int(number)}.pt")


MODEL_PREFIX = "model-trial-"


def _in_folder(root: str | Path, study_name: str, name: str) -> Path:
    base = checkpoint_folder(root, study_name)
    path = (base / name).resolve()
    if not path.is_relative_to(base):  # defence in depth; the slug already prevents it
        raise ValueError(f"checkpoint path escapes {base}")
    return path
