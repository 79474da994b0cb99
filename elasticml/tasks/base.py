"""What a task gives the trainer: datasets, a model, a loss and its metrics.

The trainer owns the loop and the data path; a task owns everything that depends on the data.
Every task's splits are map-style `torch.utils.data.Dataset`s that the trainer reads through
one `DataLoader` with the elastic batch sampler (`elasticml.data`): the bundled tasks hold
their data in memory (`TensorSplit`), a recipe's own datasets come from `_target_` components
(`tasks/own.py`). Neither is a separate path.

Evaluation is sharded: each process scores its `Shard` of a split and the task's torchmetrics
objects combine their states across processes on `compute`, so the numbers do not depend on
how many processes took part.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch.utils.data import Dataset


@dataclass(frozen=True)
class Shard:
    """The contiguous block of a split that process `rank` of `world` evaluates."""

    rank: int = 0
    world: int = 1

    def ids(self, length: int) -> torch.Tensor:
        base, extra = divmod(length, self.world)
        start = self.rank * base + min(self.rank, extra)
        return torch.arange(start, start + base + (self.rank < extra))

    @property
    def distributed(self) -> bool:
        """Whether metric states must be combined across the process group on `compute`."""
        return self.world > 1


class Task(Protocol):
    name: str
    main_metric: str
    """Validation metric that picks the best checkpoint unless the recipe names another."""
    higher_is_better: bool
    collate_fn: Callable | None
    """The DataLoader's collate function; None: the dataset's own `collate`, else torch's."""

    def splits(self) -> dict[str, Dataset]:
        """`train`, `val` and `test`, identical on every rank (a function of the seed)."""

    def build_model(self) -> torch.nn.Module: ...

    def loss(self, model: torch.nn.Module, batch) -> torch.Tensor:
        """Per-sample losses [batch] (exact fixed-global-batch math), or the batch mean."""

    def evaluate(self, model: torch.nn.Module, split: Dataset, device: torch.device,
                 shard: Shard = Shard()) -> dict:
        """Metrics of one split over all shards: plain floats, plus optional lists
        (per-class values, matrices). Every process of a sharded evaluation calls it."""
