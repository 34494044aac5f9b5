"""Checkpoints: a run's whole state, written atomically, read back without executing code."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import torch

from hpsearch.errors import CheckpointError, HpsearchError
from hpsearch.files import atomic_write
from hpsearch.masking import one_line


def save_checkpoint(path: Path, state: dict) -> None:
    """Write atomically, so a crash mid-write never leaves a truncated checkpoint.

    Serialised in memory first: torch.save's own file writer reports a full disk as an opaque
    `inline_container.cc` RuntimeError, while atomic_write names the file and the reason (and
    leaves no partial file behind on the full disk)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, "wb") as out:
            out.write(buffer.getbuffer())
    except OSError as exc:  # the folder could not be made
        raise CheckpointError(f"checkpoint: cannot write {path}: {exc.strerror or exc}") from exc
    except HpsearchError as exc:
        raise CheckpointError(f"checkpoint: {exc}") from exc


def load_checkpoint(path: Path) -> dict:
    """A checkpoint's state; CheckpointError (naming the file) if it is missing or corrupt."""
    try:
        # weights_only: tensors and plain containers only; loading never executes code
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # torch's text here advises weights_only=False: no
        raise CheckpointError(f"checkpoint {path} is unreadable (not a checkpoint, or holds "
                              "something other than tensors)") from exc
    except Exception as exc:  # truncated zip, I/O error, missing file
        reason = one_line(exc)[:120]
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(exc).__name__}: "
                              f"{reason})") from exc


def load_weights(model: torch.nn.Module, weights: dict, path: Path) -> None:
    """Load `weights` (read from `path`) into `model`; CheckpointError naming the file and the
    first mismatch when they do not fit it (another architecture, another size), instead of
    torch's multi-line RuntimeError."""
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        details = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()]
        first = details[0] if details else " ".join(str(exc).split())
        raise CheckpointError(f"checkpoint {path} does not fit the model: {first}".rstrip(".")
                              + (f" (and {len(details) - 1} more)" if len(details) > 1 else "")
                              ) from exc
