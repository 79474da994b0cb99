"""Models shared by tasks, built from the recipe's `model` section.

No BatchNorm: its statistics depend on the per-rank batch, which would break the promise that
a step computes the same update at every world size.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from elasticml.recipe.schema import CNNModel, MLPModel, TransformerModel


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


class ImageCNN(nn.Module):
    """`cnn` as a component: images [B, channels, size, size] -> logits [B, classes]."""

    def __init__(self, classes: int, in_channels: int = 1, size: int = 28,
                 channels: tuple[int, ...] = (32, 64), hidden: int = 128,
                 dropout: float = 0.0) -> None:
        super().__init__()
        config = CNNModel(channels=list(channels), hidden=hidden, dropout=dropout)
        self.net = cnn(config, (in_channels, size, size), classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


class Reshape(nn.Module):
    def __init__(self, *shape: int) -> None:
        super().__init__()
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape)


class MatrixFactorization(nn.Module):
    """Users and items as `dim`-vectors plus an item bias; a score is their dot product.

    `forward(users [B], items [B, n]) -> [B, n]` scores candidate lists for the loss;
    `score_all(users [B]) -> [B, items]` ranks the whole catalogue for evaluation.
    """

    def __init__(self, users: int, items: int, dim: int) -> None:
        super().__init__()
        self.user = nn.Embedding(users, dim)
        self.item = nn.Embedding(items, dim)
        self.bias = nn.Embedding(items, 1)
        for table in (self.user, self.item):
            nn.init.normal_(table.weight, std=dim ** -0.5)
        nn.init.zeros_(self.bias.weight)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return (self.user(users)[:, None, :] * self.item(items)).sum(-1) + \
            self.bias(items).squeeze(-1)

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        return self.user(users) @ self.item.weight.T + self.bias.weight.T


class CausalTransformer(nn.Module):
    """A small decoder-only transformer: token + learned position embeddings, pre-norm blocks
    with a causal mask, a final LayerNorm and a linear head. `[B, T] -> logits [B, T, vocab]`."""

    def __init__(self, config: TransformerModel, vocab: int, length: int) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, config.dim)
        self.positions = nn.Parameter(torch.randn(length, config.dim) * 0.02)
        block = nn.TransformerEncoderLayer(config.dim, config.heads, config.dim * config.ff_mult,
                                           dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.blocks = nn.TransformerEncoder(block, config.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.dim)
        self.head = nn.Linear(config.dim, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        length = tokens.shape[1]
        x = self.tokens(tokens) + self.positions[:length]
        mask = nn.Transformer.generate_square_subsequent_mask(length, device=tokens.device)
        x = self.blocks(x, mask=mask, is_causal=True)
        return self.head(self.norm(x))
