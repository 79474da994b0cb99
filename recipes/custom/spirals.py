"""A worked example of bringing your own data and model to elasticml.

`make_splits` is a data factory (`task.factory: recipes/custom/spirals.py:make_splits`):
interleaved spiral arms in the plane, one class per arm, plus uninformative noise columns.
It returns `(x, y)`; elasticml cuts it into train/val/test. `make_model` is a model factory
(`model.factory: recipes/custom/spirals.py:make_model`): it gets `info` with the number of
features and classes and returns any `torch.nn.Module` mapping rows to logits.

`python recipes/custom/spirals.py` rewrites `spirals.csv`, the same kind of data as a file
for the CSV recipe.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def make_splits(samples: int = 3000, arms: int = 3, noise: float = 0.25,
                noise_columns: int = 2, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(arms, size=samples)
    radius = rng.uniform(0.2, 1.0, size=samples)
    angle = 3.0 * np.pi * radius + 2.0 * np.pi * y / arms
    points = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    points += rng.normal(scale=noise * 0.1, size=points.shape)
    extra = rng.normal(size=(samples, noise_columns))
    return np.concatenate([points, extra], axis=1).astype(np.float32), y


class ResidualMLP(nn.Module):
    def __init__(self, features: int, classes: int, hidden: int, blocks: int) -> None:
        super().__init__()
        self.inp = nn.Linear(features, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, hidden), nn.GELU())
            for _ in range(blocks))
        self.out = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)


def make_model(info: dict, hidden: int = 64, blocks: int = 3) -> nn.Module:
    return ResidualMLP(info["features"], info["classes"], hidden, blocks)


if __name__ == "__main__":
    from pathlib import Path

    x, y = make_splits(samples=1500, seed=1)
    names = np.array(["red", "green", "blue"])[y]
    lines = ["x,y,noise_1,noise_2,colour"]
    lines += [",".join(f"{v:.5f}" for v in row) + f",{name}" for row, name in zip(x, names)]
    Path(__file__).with_name("spirals.csv").write_text("\n".join(lines) + "\n")
