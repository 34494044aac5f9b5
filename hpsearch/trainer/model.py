"""The MLP-Mixer, the plain MLP baseline, and weight initialisers. Pure torch."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from hpsearch.params import NUM_CLASSES, TrialParams, num_patches
from hpsearch.trainer.factory import build_factory_model

ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "relu": nn.ReLU}


class Dropout(nn.Module):
    """Inverted dropout, as nn.Dropout, with a mask that is cheaper to draw on the CPU.

    nn.Dropout draws one Bernoulli sample per element; on this project's CPU that cost ~7 ns an
    element and made a Mixer training step with dropout 2.3x slower than without. Here each
    element's mask comes from 16 random bits, four per 64-bit draw of the same seeded generator,
    so the generator runs a quarter as often; p is rounded to a multiple of 1/65536, and the
    survivors are scaled by 1/(1 - that p). Identity in eval mode; nn's version on GPUs and
    under torch.compile.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.cutoff = round(p * 65536)  # drop where the 16 bits, read unsigned, fall below it
        if not 0.0 <= p < 1.0 or self.cutoff == 65536:
            raise ValueError(f"dropout must be in [0, 1) and below 1 - 2^-17, got {p}")
        self.p = self.cutoff / 65536

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.cutoff == 0:
            return x
        if x.device.type != "cpu" or torch.compiler.is_compiling():
            # GPUs draw masks fast; torch.compile fuses its own (and cannot trace random_)
            return nn.functional.dropout(x, self.p, training=True)
        n = x.numel()
        words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-2**63, None)
        # each 16-bit lane, read as a signed int16, is uniform on [-32768, 32767], so
        # P(bits >= cutoff - 32768) = 1 - cutoff / 65536 exactly
        bits = words.view(torch.int16)[:n].view(x.shape)
        # bool tensors are slow to convert and combine here; their uint8 view is fast
        mask = (bits >= self.cutoff - 32768).view(torch.uint8).to(x.dtype)
        return x * mask.mul_(1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p:g}"


class FeedForward(nn.Module):
    """Linear (dim → hidden) → activation → dropout → linear (→ dim) → dropout, on the last
    dimension."""

    def __init__(
        self,
        *,
        dim: int,
        hidden: int,
        dropout: float = 0.0,
        act_layer: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden),
            act_layer(),
            Dropout(dropout),
            nn.Linear(hidden, dim),
            Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def forward_columns(self, x: torch.Tensor) -> torch.Tensor:
        """The same MLP applied to each column of a 2-D `x` (dim, n): W @ x + b as one matrix
        product each, where `forward` would need x transposed (a copy) and back again."""
        first, act, drop, second, drop_out = self.net
        hidden = drop(act(torch.addmm(first.bias[:, None], first.weight, x)))
        return drop_out(torch.addmm(second.bias[:, None], second.weight, hidden))


class MixerBlock(nn.Module):
    """Token mixing across the `num_patches` patches, then channel mixing over `dim`
    channels; each pre-normed (`norm_layer(dim)`) with a skip."""

    def __init__(
        self,
        *,
        num_patches: int,
        dim: int,
        token_dim: int,
        channel_dim: int,
        dropout: float = 0.0,
        act_layer: type[nn.Module] = nn.GELU,
        norm_layer: type[nn.Module] = nn.LayerNorm,
    ) -> None:
        super().__init__()
        self.token_norm = norm_layer(dim)
        self.token_mlp = FeedForward(dim=num_patches, hidden=token_dim, dropout=dropout,
                                     act_layer=act_layer)
        self.channel_norm = norm_layer(dim)
        self.channel_mlp = FeedForward(dim=dim, hidden=channel_dim, dropout=dropout,
                                       act_layer=act_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (patches, batch, dim)
        # patches first: token mixing is one matrix product over all (image, channel) columns
        # of the (patches, batch * dim) view, with no transposed copy either way
        patches, batch, dim = x.shape
        mixed = self.token_mlp.forward_columns(self.token_norm(x).view(patches, batch * dim))
        x = x + mixed.view(patches, batch, dim)
        return x + self.channel_mlp(self.channel_norm(x))


class MLPMixer(nn.Module):
    """MLP-Mixer (Tolstikhin et al., 2021): patches → linear stem → mixer blocks → norm →
    mean over patches → linear head. `patch_size` must divide the images' height and width
    (ConfigError)."""

    def __init__(
        self,
        *,
        image_shape: tuple[int, int, int],
        patch_size: int,
        hidden_dim: int,
        token_mlp_dim: int,
        channel_mlp_dim: int,
        num_blocks: int = 1,
        dropout: float = 0.0,
        act_layer: type[nn.Module] = nn.GELU,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        num_classes: int = NUM_CLASSES,
    ) -> None:
        super().__init__()
        patches, patch_pixels = mixer_dims(image_shape, patch_size)
        self.patch_size = patch_size
        self.stem = nn.Linear(patch_pixels, hidden_dim)
        self.blocks = nn.Sequential(*[
            MixerBlock(num_patches=patches, dim=hidden_dim, token_dim=token_mlp_dim,
                       channel_dim=channel_mlp_dim, dropout=dropout, act_layer=act_layer,
                       norm_layer=norm_layer)
            for _ in range(num_blocks)
        ])
        self.norm = norm_layer(hidden_dim)
        self.head = nn.Linear(hidden_dim, num_classes)

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) → (B, patches, C·P·P), patches in row-major order; stored patches
        first (its transpose is contiguous), the layout the blocks work in."""
        b, c, h, w = images.shape
        p = self.patch_size
        x = images.reshape(b, c, h // p, p, w // p, p).permute(2, 4, 0, 1, 3, 5)
        return x.reshape((h // p) * (w // p), b, c * p * p).transpose(0, 1)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) → normalised patch features (B, patches, hidden_dim), a view of
        patches-first memory."""
        tokens = self.stem(self.patchify(images).transpose(0, 1))  # (patches, B, hidden)
        return self.norm(self.blocks(tokens)).transpose(0, 1)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Patch features → logits (B, num_classes): the mean over patches, then the head."""
        return self.head(features.mean(dim=1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images))


class MLP(nn.Module):
    """The classic baseline: flatten, `layers` hidden layers of linear (`width`) → activation
    → dropout, linear."""

    def __init__(
        self,
        *,
        image_shape: tuple[int, int, int],
        width: int,
        layers: int = 1,
        dropout: float = 0.0,
        act_layer: type[nn.Module] = nn.GELU,
        num_classes: int = NUM_CLASSES,
    ) -> None:
        super().__init__()
        dims = [image_shape[0] * image_shape[1] * image_shape[2]] + [width] * layers
        hidden: list[nn.Module] = []
        for d_in, d_out in zip(dims[:-1], dims[1:], strict=True):
            hidden += [nn.Linear(d_in, d_out), act_layer(), Dropout(dropout)]
        self.net = nn.Sequential(nn.Flatten(), *hidden, nn.Linear(dims[-1], num_classes))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


def mixer_dims(image_shape: tuple[int, int, int], patch_size: int) -> tuple[int, int]:
    """(patches per image, C·P·P pixels per patch: the stem's input width); ConfigError (via
    params.num_patches, the one divisibility check) if the patches do not tile the images."""
    return num_patches(image_shape, patch_size), image_shape[0] * patch_size * patch_size


def init_weights(model: nn.Module, scheme: str) -> None:
    """Re-initialise every linear layer; LayerNorms keep weight 1, bias 0."""
    if scheme == "default":
        return  # PyTorch's own Linear init (kaiming_uniform with a=sqrt(5))
    for module in model.modules():
        if not isinstance(module, nn.Linear):
            continue
        if scheme == "xavier_uniform":
            nn.init.xavier_uniform_(module.weight)
        elif scheme == "kaiming_uniform":
            nn.init.kaiming_uniform_(module.weight, nonlinearity="relu")
        elif scheme == "normal":
            nn.init.normal_(module.weight, std=0.02)
        else:
            raise ValueError(f"unknown initialiser {scheme!r}")
        nn.init.zeros_(module.bias)


def build_model(params: TrialParams, image_shape: tuple[int, int, int],
                num_classes: int = NUM_CLASSES) -> nn.Module:
    act_layer = ACTIVATIONS[params.activation]  # resolved once, handed down as a class
    if params.is_factory:
        model: nn.Module = build_factory_model(params.model, dict(params.model_args),
                                               image_shape, num_classes)
    elif params.model == "mlp":
        model = MLP(image_shape=image_shape, width=params.mlp_width, layers=params.mlp_layers,
                    num_classes=num_classes, dropout=params.dropout, act_layer=act_layer)
    else:
        model = MLPMixer(image_shape=image_shape, patch_size=params.patch_size,
                         hidden_dim=params.hidden_dim, token_mlp_dim=params.token_mlp_dim,
                         channel_mlp_dim=params.channel_mlp_dim, num_blocks=params.num_blocks,
                         num_classes=num_classes, dropout=params.dropout, act_layer=act_layer)
    init_weights(model, params.init)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class LinearUse(NamedTuple):
    """One linear layer as a model applies it: to `rows` vectors per image, `fan_in` → `fan_out`."""

    rows: int
    fan_in: int
    fan_out: int


def linear_uses(params: TrialParams, image_shape: tuple[int, int, int]) -> list[LinearUse]:
    """Every linear layer of the model `params` builds, input first, with the rows per image
    it multiplies (the Mixer's token MLPs run once per channel, over the patches)."""
    c, h, w = image_shape
    if params.model == "mlp":
        dims = [c * h * w] + [params.mlp_width] * params.mlp_layers + [NUM_CLASSES]
        return [LinearUse(1, a, b) for a, b in zip(dims[:-1], dims[1:], strict=True)]
    n, pixels = mixer_dims(image_shape, params.patch_size)
    d, t, ch = params.hidden_dim, params.token_mlp_dim, params.channel_mlp_dim
    block = [LinearUse(d, n, t), LinearUse(d, t, n), LinearUse(n, d, ch), LinearUse(n, ch, d)]
    return [LinearUse(n, pixels, d), *block * params.num_blocks, LinearUse(1, d, NUM_CLASSES)]


def matmul_flops_per_image(params: TrialParams, image_shape: tuple[int, int, int]) -> int:
    """Multiply-add FLOPs (2 per MAC) of one forward pass, counting the linear layers only."""
    return sum(2 * u.rows * u.fan_in * u.fan_out for u in linear_uses(params, image_shape))


def training_matmuls(params: TrialParams, image_shape: tuple[int, int, int],
                     batch: int) -> list[tuple[int, int, int]]:
    """(m, k, n) of every matrix product in one training step on `batch` images: each linear
    layer's forward, its weight gradient, and its input gradient except the first layer's
    (the images need none)."""
    shapes = []
    for i, use in enumerate(linear_uses(params, image_shape)):
        rows = use.rows * batch
        shapes += [(rows, use.fan_in, use.fan_out), (use.fan_out, rows, use.fan_in)]
        if i > 0:
            shapes.append((rows, use.fan_out, use.fan_in))
    return shapes
