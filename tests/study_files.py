"""Tiny study definitions on synthetic data, for runner tests (seconds per study)."""

from __future__ import annotations

from pathlib import Path


def write_tiny_study(folder: Path, name: str = "tiny", *, n_trials: int = 4, epochs: int = 3,
                     pruner: str = "none", sampler: str = "random", extra_space: str = "",
                     heartbeat: tuple[int, int] = (1, 4), dry_run: float | None = None) -> Path:
    """A study of small Mixers on the synthetic dataset; checkpoints go under `folder`.
    `dry_run`: seconds per epoch of a [dry_run] study (no training)."""
    path = folder / f"{name}.toml"
    dry = f"[dry_run]\nseconds_per_epoch = {dry_run}\n" if dry_run is not None else ""
    path.write_text(f"""{dry}
[study]
name = "{name}"
sampler = "{sampler}"
pruner = "{pruner}"
n_trials = {n_trials}
seed = 0

[data]
dataset = "synthetic"
synthetic_size = 300

[budget]
max_epochs = {epochs}

[workers]
heartbeat_interval = {heartbeat[0]}
grace_period = {heartbeat[1]}
checkpoint_dir = "{folder / 'checkpoints'}"

[space]
patch_size = [7, 14]
hidden_dim = {{ low = 16, high = 32 }}
token_mlp_dim = 16
channel_mlp_dim = 32
lr = {{ low = 1e-3, high = 1e-2, log = true }}
batch_size = 64
precision = "fp32"
{extra_space}
""")
    return path


# a valid study file that the bad-input tests each break in one place
VALID_STUDY = """\
[study]
name = "bad-input"
sampler = "random"
pruner = "none"
n_trials = 2
seed = 0

[data]
dataset = "synthetic"
synthetic_size = 300

[budget]
max_epochs = 2

[workers]
heartbeat_interval = 1
grace_period = 4
checkpoint_dir = "checkpoints"

[space]
patch_size = [7, 14]
hidden_dim = { low = 16, high = 32 }
lr = { low = 1e-3, high = 1e-2, log = true }
optimizer = ["adam", "sgd"]
batch_size = 64
"""
