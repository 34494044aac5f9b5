"""Hyperparameters of one training run, validated, with no torch import.

`TrialParams` is the contract between the search space (which samples it), the trainer (which
consumes it) and the results database (which stores it as JSON). Query commands import this
module, so it must stay free of heavy dependencies.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
from dataclasses import dataclass, fields
from typing import Any, NamedTuple

from hpsearch.errors import ConfigError

MODELS = ("mixer", "mlp")
# A model of the user's own: "module:function", the module imported as Python would from the
# directory hpsearch runs in or from PYTHONPATH (hpsearch.trainer.factory builds it).
FACTORY_PATH = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")
MODEL_ARGS = "model_args"  # a factory's keyword argument `width` is the parameter model_args.width
OPTIMIZERS = ("sgd", "adam", "adamw", "radam")
ACTIVATIONS = ("gelu", "relu")
SCHEDULERS = ("none", "cosine", "plateau", "step")
# each parameter with a fixed set of values -> those values
CHOICES = {"optimizer": OPTIMIZERS,
           "init": ("default", "xavier_uniform", "kaiming_uniform", "normal"),
           "activation": ACTIVATIONS, "scheduler": SCHEDULERS,
           "plateau_metric": ("val_loss", "val_acc"), "plateau_mode": ("auto", "min", "max"),
           "precision": ("auto", "fp32", "bf16"), "compile": ("auto", "on", "off")}


class DatasetFacts(NamedTuple):
    """A dataset's images' shape (channels, height, width), its class count, its training and
    test set sizes: for the datasets known by name as published, known without loading
    anything, so that configs can be validated before anything runs."""

    shape: tuple[int, int, int]
    classes: int
    train: int
    test: int

    @property
    def sizes(self) -> tuple[int, int]:
        return self.train, self.test


# the datasets known by name (torchvision's; trainer/data.py loads them); any other [data]
# dataset is the path of an image folder or a .npz file (trainer/data_files.py reads its facts)
DATASETS: dict[str, DatasetFacts] = {
    "fashion-mnist": DatasetFacts((1, 28, 28), 10, 60_000, 10_000),
    "mnist": DatasetFacts((1, 28, 28), 10, 60_000, 10_000),
    "kmnist": DatasetFacts((1, 28, 28), 10, 60_000, 10_000),
    "cifar10": DatasetFacts((3, 32, 32), 10, 50_000, 10_000),
    "cifar100": DatasetFacts((3, 32, 32), 100, 50_000, 10_000),
    "svhn": DatasetFacts((3, 32, 32), 10, 73_257, 26_032),
}
SYNTHETIC_SHAPE = (1, 28, 28)
NUM_CLASSES = 10  # of the synthetic set, and the default of a model built without data
MIN_TRAIN_IMAGES = 20  # fewer says nothing about a configuration (a subset, a rung)
DEVICES = ("auto", "cpu", "cuda")  # --device: "auto" is a GPU if there is one
# Every integer a study file or option holds must fit a 32-bit signed INTEGER column (PostgreSQL's
# `integer`, the widest that every database we support stores without overflow) and a seed that
# torch and numpy accept even after offsets are added.
INT_MAX = 2**31 - 1


@dataclass(frozen=True)
class TrialParams:
    """Everything that defines one training run of one model."""

    # model: a built-in name (MODELS) or a factory path (FACTORY_PATH)
    model: str = "mixer"
    # a factory's keyword arguments, (name, value) sorted by name; in dicts (to_dict, the
    # trial row, the search space) each is the parameter "model_args.<name>"
    model_args: tuple[tuple[str, Any], ...] = ()
    patch_size: int = 4
    hidden_dim: int = 128
    token_mlp_dim: int = 64
    channel_mlp_dim: int = 512
    num_blocks: int = 1
    mlp_width: int = 256  # MLP baseline: width of each hidden layer
    mlp_layers: int = 1  # MLP baseline: number of hidden layers
    dropout: float = 0.0
    activation: str = "gelu"
    init: str = "default"
    # optimisation. The optimiser and scheduler options take PyTorch's defaults, so a study
    # that does not name one trains what the same plain PyTorch code would.
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.0  # SGD; PyTorch's default (hpsearch's was 0.9, Nesterov)
    nesterov: bool = False  # SGD: Nesterov momentum; needs momentum > 0, as in PyTorch
    beta1: float = 0.9  # Adam/AdamW/RAdam: betas[0]
    beta2: float = 0.999  # Adam/AdamW/RAdam: betas[1]
    eps: float = 1e-8  # Adam/AdamW/RAdam: added to the denominator
    batch_size: int = 256
    label_smoothing: float = 0.0
    scheduler: str = "none"
    warmup_epochs: int = 0  # cosine: linear warm-up, in epochs
    min_lr: float = 0.0  # cosine: the lr it decays to (eta_min); plateau: the floor (min_lr)
    step_size: int = 10  # step scheduler: epochs between decays
    gamma: float = 0.1  # step: decay factor; plateau: the factor a cut multiplies the lr by
    plateau_metric: str = "val_loss"  # what plateau watches (replayed without a val split)
    plateau_mode: str = "auto"  # min or max; auto: min for val_loss, max for val_acc
    plateau_patience: int = 10  # epochs without improvement tolerated; a cut after one more
    plateau_threshold: float = 1e-4  # relative change that counts as an improvement
    plateau_cooldown: int = 0  # epochs after a cut before bad epochs count again
    epochs: int = 10
    # augmentation (applied to whole batches of tensors)
    augment: bool = False
    crop_padding: int = 2
    hflip: bool = True
    random_erasing: float = 0.0  # probability per sample
    # speed
    precision: str = "auto"
    compile: str = "auto"  # auto: where measured to repay its compile over the run (trainer)

    def __post_init__(self) -> None:
        if self.model not in MODELS and not FACTORY_PATH.fullmatch(self.model):
            raise ConfigError(f"unknown model {self.model!r} (choose from: {', '.join(MODELS)}, "
                              "or a factory \"module:function\" such as \"nets:small_cnn\")")
        for name, choices in CHOICES.items():
            if getattr(self, name) not in choices:
                raise ConfigError(f"unknown {name} {getattr(self, name)!r} (choose from: "
                                  f"{', '.join(choices)})")
        for name in ("patch_size", "hidden_dim", "token_mlp_dim", "channel_mlp_dim",
                     "num_blocks", "mlp_width", "mlp_layers", "batch_size", "epochs", "step_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        # written as `not (valid)` so that nan, which fails every comparison, is refused too
        for name in ("lr", "eps"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("weight_decay", "warmup_epochs", "crop_padding", "min_lr",
                     "plateau_threshold", "plateau_patience", "plateau_cooldown"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name} must not be negative, got {getattr(self, name)}")
        for name in ("dropout", "label_smoothing", "random_erasing", "momentum", "beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0.0 < self.gamma < 1.0:  # 1 would never decay; PyTorch's plateau refuses >= 1
            raise ConfigError(f"gamma must be in (0, 1), got {self.gamma}")
        # combinations are checked only where they apply, so that a study may fix nesterov or
        # plateau_mode and still sample an optimiser or scheduler that ignores them (a new
        # check of several parameters: add them to CHECKED_TOGETHER)
        if self.optimizer == "sgd" and self.nesterov and not self.momentum > 0:
            raise ConfigError("nesterov needs momentum > 0 (PyTorch's SGD refuses Nesterov "
                              f"without momentum), got momentum {self.momentum}")
        if (self.scheduler == "plateau"
                and self.plateau_mode not in ("auto", self.plateau_direction)):
            raise ConfigError(
                f"plateau_mode {self.plateau_mode!r} contradicts plateau_metric "
                f"{self.plateau_metric!r}: it would cut the lr while the metric improves "
                f"(use {self.plateau_direction!r} or \"auto\")")

    @property
    def plateau_direction(self) -> str:
        """"min" or "max": the direction in which plateau_metric improves."""
        return "max" if self.plateau_metric == "val_acc" else "min"

    def check_image(self, dataset: str, shape: tuple[int, int, int] | None = None) -> None:
        """Raise ConfigError if the patch size does not tile the images of `dataset`, which
        are of `shape` (C, H, W) where given (a folder's or .npz file's, read from its files)."""
        if self.model == "mixer":
            num_patches(shape or dataset_shape(dataset), self.patch_size, f" of {dataset}")

    @property
    def is_factory(self) -> bool:
        return self.model not in MODELS

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        del out[MODEL_ARGS]
        return {**out, **{f"{MODEL_ARGS}.{k}": v for k, v in self.model_args}}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrialParams:
        """Build from a plain mapping, rejecting unknown keys and coercing simple types; a
        factory's arguments ("model_args.<name>") are kept as they are."""
        prefix = f"{MODEL_ARGS}."
        model_args = tuple(sorted((k.removeprefix(prefix), v) for k, v in values.items()
                                  if k.startswith(prefix)))
        values = {k: v for k, v in values.items() if not k.startswith(prefix)}
        known = {f.name: f for f in fields(cls) if f.name != MODEL_ARGS}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(
                f"unknown parameter(s): {', '.join(unknown)} (known: {', '.join(known)})"
            )
        defaults = cls()
        coerced = {k: coerce(k, v, type(getattr(defaults, k))) for k, v in values.items()}
        return cls(**coerced, model_args=model_args)

    def replace(self, **changes: Any) -> TrialParams:
        return TrialParams.from_dict({**self.to_dict(), **changes})


PARAM_NAMES: tuple[str, ...] = tuple(f.name for f in fields(TrialParams)
                                     if f.name != MODEL_ARGS)

# The parameters whose values TrialParams.__post_init__ and check_image judge together, beside
# each one's own range: a study's space may hold no combination of them that fails, since a
# trial sampled into one cannot run (search/study_file.py checks every combination).
CHECKED_TOGETHER: tuple[tuple[str, ...], ...] = (
    ("optimizer", "nesterov", "momentum"),
    ("scheduler", "plateau_metric", "plateau_mode"),
    ("model", "patch_size"),
)

# The trainer options that act only under a choice of another (hpsearch.trainer: make_optimizer,
# Schedule, Augmentation, build_model): option -> (that choice, the values under which it acts).
# A study searches and records an option only where it acts (hpsearch.spec.StudyConfig.resolve).
APPLIES_WHEN: dict[str, tuple[str, tuple[Any, ...]]] = {
    **dict.fromkeys(("patch_size", "hidden_dim", "token_mlp_dim", "channel_mlp_dim",
                     "num_blocks"), ("model", ("mixer",))),
    **dict.fromkeys(("mlp_width", "mlp_layers"), ("model", ("mlp",))),
    # a factory takes only its model_args
    **dict.fromkeys(("dropout", "activation"), ("model", MODELS)),
    **dict.fromkeys(("momentum", "nesterov"), ("optimizer", ("sgd",))),
    **dict.fromkeys(("beta1", "beta2", "eps"), ("optimizer", ("adam", "adamw", "radam"))),
    "warmup_epochs": ("scheduler", ("cosine",)),
    "min_lr": ("scheduler", ("cosine", "plateau")),
    "step_size": ("scheduler", ("step",)),
    "gamma": ("scheduler", ("step", "plateau")),
    **dict.fromkeys(("plateau_metric", "plateau_mode", "plateau_patience", "plateau_threshold",
                     "plateau_cooldown"), ("scheduler", ("plateau",))),
    **dict.fromkeys(("crop_padding", "hflip", "random_erasing"), ("augment", (True,))),
}


def param_type(name: str) -> type:
    return type(getattr(TrialParams(), name))


def coerce(name: str, value: Any, kind: type) -> Any:
    """Coerce a TOML or command-line value to the parameter's type, or raise ConfigError."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
    elif kind is int:
        number: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, float) and value.is_integer():
            number = int(value)
        elif isinstance(value, str):
            with contextlib.suppress(ValueError):
                number = int(value)
        if number is not None:
            if abs(number) > INT_MAX:
                raise ConfigError(f"{name} must be between -{INT_MAX} and {INT_MAX}, "
                                  f"got {_short(value)}")
            return number
    elif kind is float:
        real: float | None = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                real = float(value)
            except OverflowError:  # an int beyond float's range
                real = math.inf
        elif isinstance(value, str):
            with contextlib.suppress(ValueError):
                real = float(value)
        if real is not None:
            # nan passes every comparison-based range check, and inf is no learning rate
            if not math.isfinite(real):
                raise ConfigError(f"{name} must be a finite number, got {_short(value)}")
            return real
    elif kind is str and isinstance(value, str):
        return value
    raise ConfigError(f"{name} must be {kind.__name__}, got {_short(value)}")


def _short(value: Any) -> str:
    """repr() of a value for an error line, cut to a readable length."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def num_patches(image_shape: tuple[int, int, int], patch_size: int, what: str = "") -> int:
    """Patches of a patch_size grid over images of this (C, H, W) shape; the one check that
    the grid tiles them (ConfigError otherwise, naming `what`, e.g. " of fashion-mnist")."""
    _, height, width = image_shape
    if patch_size < 1 or height % patch_size or width % patch_size:
        both = f" (it must divide {height} and {width})" if height != width else ""
        raise ConfigError(f"patch_size {patch_size} does not divide the {height}x{width} "
                          f"images{what}; choose a divisor of {math.gcd(height, width)}{both}")
    return (height // patch_size) * (width // patch_size)


def check_device(name: str) -> str:
    """The one check of a --device name, torch-free: `run` checks it before anything starts;
    hpsearch.trainer.runtime.resolve_device turns it into a torch device."""
    if name not in DEVICES:
        raise ConfigError(f"unknown device {name!r} (choose from: {', '.join(DEVICES)})")
    return name


def dataset_shape(dataset: str) -> tuple[int, int, int]:
    """The image shape of a dataset known by name (or the synthetic set's)."""
    if dataset == "synthetic":
        return SYNTHETIC_SHAPE
    if dataset not in DATASETS:
        raise ConfigError(unknown_dataset(dataset))
    return DATASETS[dataset].shape


def unknown_dataset(dataset: str) -> str:
    return (f"unknown dataset {dataset!r} (known: {', '.join(DATASETS)}, synthetic; or the "
            "path of an image folder or of a .npz file)")


@dataclass
class DataOptions:
    """Which data a run trains on; not sampled by the search."""

    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    val_fraction: float = 0.1
    subset: int | None = None  # use only this many training images (before the split)
    synthetic_size: int = 1200  # training images of the synthetic dataset
    # how far a synthetic image may lean towards another class (trainer/data.py synthetic_raw)
    synthetic_blend: float = 0.0

    def __post_init__(self) -> None:
        if not self.dataset.strip():
            raise ConfigError(unknown_dataset(self.dataset))
        if not 0.0 <= self.synthetic_blend < 1.0:
            raise ConfigError(f"synthetic_blend must be in [0, 1), got {self.synthetic_blend}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.subset is not None and self.subset < MIN_TRAIN_IMAGES:
            raise ConfigError(f"subset must be at least {MIN_TRAIN_IMAGES} images, "
                              f"got {self.subset}")

    def usual_sizes(self) -> tuple[int, int]:
        """The (training, test) set sizes the dataset has as published (synthetic: as made)."""
        if self.dataset == "synthetic":
            return self.synthetic_size, synthetic_test_size(self.synthetic_size)
        return DATASETS[self.dataset].train, DATASETS[self.dataset].test

    def image_counts(self, sizes: tuple[int, int] | None = None) -> ImageCounts:
        """How many images each split holds, known before anything is loaded (an hours budget
        is planned from them): of the (training, test) set `sizes` the run's files hold
        (trainer/data_files.py dataset_sizes), by default of the usual sizes."""
        full, test = sizes or self.usual_sizes()
        searched = min(full, self.subset) if self.subset is not None else full
        train = searched - max(1, round(searched * self.val_fraction))
        return ImageCounts(train=train, val=searched - train, full=full, test=test)


@dataclass(frozen=True)
class ImageCounts:
    """Images in the search's train and validation splits, in the final retraining's whole
    training set (a [data] subset is not applied there) and in the test set."""

    train: int
    val: int
    full: int
    test: int


def synthetic_test_size(train_size: int) -> int:
    return max(200, train_size // 5)
