"""A trained model in one self-contained file: the weights with everything needed to use them.

As nanoGPT does, the configuration rides in the file: the full resolved params (which rebuild
the architecture), the image shape, the normalisation the inputs need (the training split's mean
and std), the seed the run trained with, and the epoch and metrics the weights are from. A search
keeps its best trials' files (`[workers] keep_models`); `hpsearch export-model` copies one out,
and `load_model_file` (`api.load_model`) gives back a model ready for inference, without
retraining anything. The file holds tensors and plain values only, so reading it executes no
code (`torch.load(weights_only=True)`).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hpsearch.errors import CheckpointError, ConfigError
from hpsearch.files import atomic_write
from hpsearch.params import NUM_CLASSES, TrialParams
from hpsearch.trainer.checkpoint import load_checkpoint, save_checkpoint
from hpsearch.trainer.model import build_model

FORMAT = "hpsearch-model/1"


def save_model_file(path: Path, model: nn.Module, params: TrialParams,
                    image_shape: tuple[int, ...], num_classes: int, mean: float, std: float,
                    **info: Any) -> None:
    """Write `model` with its params, input shape, class count and normalisation, and `info`
    (plain values: seed, epoch, metrics, study, trial...), atomically."""
    save_checkpoint(path, {
        "format": FORMAT, "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "params": params.to_dict(), "image_shape": list(image_shape),
        "num_classes": num_classes, "mean": mean, "std": std, **info})


def read_model_file(path: Path) -> dict[str, Any]:
    """A model file's contents, checked to be one; CheckpointError naming the file if not."""
    state = load_checkpoint(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an hpsearch model file (hpsearch export-model "
                              "writes them)")
    return state


def copy_model_file(source: Path, target: str | Path, **info: Any) -> dict[str, Any]:
    """`source`'s contents with `info` added, written to `target` (whose folder must exist)
    atomically: complete or not at all. Returns what was written."""
    state = {**read_model_file(source), **info}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with atomic_write(target, "wb") as out:
        out.write(buffer.getbuffer())
    return state


@dataclass(frozen=True)
class LoadedModel:
    """A model read back from its file: in eval mode, on the CPU (`.model.to(device)` moves
    it), with what it was trained with."""

    model: nn.Module
    params: TrialParams
    mean: float  # inputs are scaled to [0, 1], then (x - mean) / std, as in training
    std: float
    info: dict[str, Any]  # everything else the file holds: seed, epoch, metrics, study, trial...
    image_shape: tuple[int, int, int]  # (C, H, W) of the data it trained on

    def prepare(self, images: torch.Tensor | Any) -> torch.Tensor:
        """uint8 images (a tensor or numpy array) in a layout a dataset stores them in:
        (N, C, H, W), channels last (N, H, W, C), or (N, H, W) for one channel; normalised as
        the model saw them in training. Anything else is one ConfigError line (floats would be
        scaled by 1/255 a second time, a channels-last batch fail deep inside the model)."""
        images = torch.as_tensor(images)
        c, h, w = self.image_shape
        shape = tuple(images.shape)
        if images.dtype == torch.uint8 and len(shape) >= 3:
            if shape[1:] == (h, w) and c == 1:
                images = images.unsqueeze(1)
            elif shape[1:] == (h, w, c) and shape[1:] != (c, h, w):
                images = images.permute(0, 3, 1, 2)
        if images.dtype != torch.uint8 or tuple(images.shape[1:]) != (c, h, w):
            raise ConfigError(f"predict takes uint8 images (N, {c}, {h}, {w}) or (N, {h}, {w}, "
                              f"{c}){f' or (N, {h}, {w})' if c == 1 else ''}, as the model "
                              f"trained on; got {str(images.dtype).removeprefix('torch.')} "
                              f"{shape}")
        return (images.float() / 255.0 - self.mean) / self.std

    @torch.inference_mode()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Class indices for uint8 images (see `prepare`)."""
        device = next(self.model.parameters()).device
        return self.model(self.prepare(images).to(device)).argmax(1)


def load_model_file(path: Path) -> LoadedModel:
    """The model a model file holds, built from its params and loaded with its weights."""
    state = read_model_file(path)
    try:
        params = TrialParams.from_dict(state["params"])
        # files written before class counts came from the data hold no num_classes: 10
        model = build_model(params, tuple(state["image_shape"]),  # type: ignore[arg-type]
                            state.get("num_classes", NUM_CLASSES))
        model.load_state_dict(state["model"])
    except (ConfigError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: the model cannot be rebuilt ({exc})".splitlines()[0]
                              ) from None
    info = {k: v for k, v in state.items()
            if k not in ("format", "model", "params", "image_shape", "mean", "std",
                         "num_classes")}
    return LoadedModel(model.eval(), params, float(state["mean"]), float(state["std"]), info,
                       tuple(state["image_shape"]))  # type: ignore[arg-type]
