"""Components a user could name in a recipe (`_target_: user_code.MaskedMLP`), with what the
tests watch. `with_model` (cluster.py) copies this file beside the recipe it writes.

* `MaskedMLP` records the dropout mask of every training forward, per rank, in `log_dir`.
* `StallingMLP` stalls in evaluation while `stall_file` exists, calling a layer every 50 ms
  as a long evaluation calls the model for every batch; it touches `<stall_file>.reached` when
  it starts stalling.
* `flipped_splits` is a table whose validation labels are the training labels flipped: the
  better the model learns, the worse it validates, so every validation after the first few is
  worse than the best so far.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn


class _MLP(nn.Module):
    def __init__(self, features: int, classes: int) -> None:
        super().__init__()
        self.hidden = nn.Linear(features, 32)
        self.out = nn.Linear(32, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.hidden(x))


class MaskedMLP(_MLP):
    def __init__(self, features: int, classes: int, log_dir: str, p: float = 0.5) -> None:
        super().__init__(features, classes)
        self.p, self.log = p, Path(log_dir) / f"masks-rank{os.environ.get('RANK', '0')}.txt"
        self.log.parent.mkdir(parents=True, exist_ok=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        if self.training:
            mask = nn.functional.dropout(torch.ones_like(h), self.p, training=True)
            with open(self.log, "a") as handle:
                handle.write("".join("1" if v else "0" for v in mask[0].tolist()) + "\n")
            h = h * mask
        return self.out(h)


class StallingMLP(_MLP):
    def __init__(self, features: int, classes: int, stall_file: str) -> None:
        super().__init__(features, classes)
        self.stall_file, self.tick = Path(stall_file), nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training and self.stall_file.exists():
            Path(f"{self.stall_file}.reached").touch()
            while self.stall_file.exists():
                time.sleep(0.05)
                self.tick(x)
        return self.out(self.features(x))


class MLP(_MLP):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x))


def flipped_splits(samples: int = 600) -> dict:
    from torch.utils.data import TensorDataset

    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(samples, 4)).astype("float32"))
    y = torch.from_numpy((x[:, 0] + 0.5 * x[:, 1] > 0).numpy().astype("int64"))
    train, val, test = np.split(np.arange(samples), [samples * 3 // 5, samples * 4 // 5])
    return {"train": TensorDataset(x[train], y[train]), "val": TensorDataset(x[val], 1 - y[val]),
            "test": TensorDataset(x[test], y[test])}
