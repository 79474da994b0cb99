"""Models shared by tasks, built from the recipe's `model` section.

No BatchNorm: its statistics depend on the per-rank batch, which would break the promise that
a step computes the same update at every world size.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from elasticml.recipe.schema import CNNModel, MLPModel


def mlp(config: MLPModel, inputs: int, outputs: int) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    width = inputs
    for hidden in config.hidden:
        layers += [nn.Linear(width, hidden), nn.GELU()]
        if config.dropout:
            layers.append(nn.Dropout(config.dropout))
        width = hidden
    layers.append(nn.Linear(width, outputs))
    return nn.Sequential(*layers)


def cnn(config: CNNModel, shape: tuple[int, int, int], outputs: int) -> nn.Module:
    """Conv blocks (conv, GroupNorm, GELU, 2x2 pool) then one hidden layer."""
    channels, height, width = shape
    layers: list[nn.Module] = []
    for out in config.channels:
        layers += [nn.Conv2d(channels, out, 3, padding=1), nn.GroupNorm(min(8, out), out),
                   nn.GELU()]
        if min(height, width) >= 4:
            layers.append(nn.MaxPool2d(2))
            height, width = height // 2, width // 2
        channels = out
    layers += [nn.Flatten(), nn.Linear(channels * height * width, config.hidden), nn.GELU()]
    if config.dropout:
        layers.append(nn.Dropout(config.dropout))
    layers.append(nn.Linear(config.hidden, outputs))
    return nn.Sequential(*layers)


def image_shape(features: int) -> tuple[int, int, int]:
    """A square one-channel image for a flat feature vector (64 -> 1x8x8)."""
    side = math.isqrt(features)
    if side * side != features:
        raise ValueError(f"{features} features do not form a square image; use model.name=mlp")
    return 1, side, side


class Reshape(nn.Module):
    def __init__(self, *shape: int) -> None:
        super().__init__()
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape)
