"""A small CNN for hpsearch's model factory: `model = "examples.cnn:small_cnn"` in a study's
[space] run from the folder that holds `examples/` (or "cnn:small_cnn" beside a study that
`hpsearch init --example cnn` wrote), its arguments searched in [space.model_args]. hpsearch
calls it with the data's shape and class count."""

from __future__ import annotations

from torch import nn


def small_cnn(*, in_channels: int, image_size: int, num_classes: int, width: int = 32,
              blocks: int = 2, dropout: float = 0.0) -> nn.Module:
    """`blocks` stages of two 3x3 convolutions (batch norm, ReLU) and a 2x2 max-pool, the
    channels doubling from `width` each stage; then global average pooling, dropout and a
    linear head. Any image size works: the pooling before the head is global."""
    layers: list[nn.Module] = []
    channels, size = in_channels, image_size
    for stage in range(blocks):
        out = width * 2 ** stage
        for _ in range(2):
            layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False),
                       nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            channels = out
        if size >= 2:  # pool while the feature map is at least 2x2
            layers.append(nn.MaxPool2d(2))
            size //= 2
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                         nn.Linear(channels, num_classes))
