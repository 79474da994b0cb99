"""A plain PyTorch script, as a user would have it before elasticml: a Dataset, a model, a loss
and a training loop. `python recipes/byo/spirals_script.py` trains it on one process.

`spirals.yaml` beside it trains the very same classes elastically by naming them
(`_target_: spirals_script.Spirals`, `spirals_script.SpiralNet`,
`torch.nn.CrossEntropyLoss`); nothing here knows about elasticml. The loop in `main()` is what
the recipe replaces.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}


class Spirals(Dataset):
    """Points on `arms` interleaved spiral arms in the plane (plus noise columns); the label
    is the arm. Samples are `(features, label)` pairs, as torchvision's datasets return them."""

    def __init__(self, split: str = "train", samples: int = 3000, arms: int = 3,
                 noise: float = 0.25, noise_columns: int = 2) -> None:
        generator = torch.Generator().manual_seed(SPLIT_SEEDS[split])
        self.labels = torch.randint(arms, (samples,), generator=generator)
        radius = 0.2 + 0.8 * torch.rand(samples, generator=generator)
        angle = 3.0 * math.pi * radius + 2.0 * math.pi * self.labels / arms
        points = torch.stack([radius * angle.cos(), radius * angle.sin()], dim=1)
        points += 0.1 * noise * torch.randn(points.shape, generator=generator)
        extra = torch.randn(samples, noise_columns, generator=generator)
        self.features = torch.cat([points, extra], dim=1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.features[index], self.labels[index]


class SpiralNet(nn.Module):
    """A residual MLP: rows of features -> logits, one per arm."""

    def __init__(self, features: int = 4, classes: int = 3, hidden: int = 64,
                 blocks: int = 3) -> None:
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


def main() -> None:
    torch.manual_seed(0)
    model, loss_fn = SpiralNet(), nn.CrossEntropyLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.003)
    loader = DataLoader(Spirals("train"), batch_size=128, shuffle=True)
    for _ in range(25):
        for features, labels in loader:
            optimizer.zero_grad()
            loss_fn(model(features), labels).backward()
            optimizer.step()
    test = Spirals("test", samples=600)
    with torch.no_grad():
        accuracy = (model(test.features).argmax(1) == test.labels).float().mean()
    print(f"test accuracy {accuracy:.3f}")


if __name__ == "__main__":
    main()
