"""What a task gives the trainer: data splits, a model, a per-sample loss and its metrics.

The trainer owns the loop; a task owns everything that depends on the data. Data lives in
memory as tensors (`Split`), indexed by global sample ids, so the elastic sampler can hand any
rank any slice of the global order without a DataLoader.

Evaluation is sharded the same way: each process scores its `Shard` of a split and the task's
torchmetrics objects combine their states across processes on `compute`, so the numbers do not
depend on how many processes took part.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass
class Split:
    """Equal-length tensors of one split; `take(ids)` returns a batch with the ids as `index`."""

    tensors: dict[str, torch.Tensor]

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def take(self, ids: torch.Tensor,
             device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        batch = {name: tensor[ids] for name, tensor in self.tensors.items()}
        batch["index"] = ids
        if str(device) != "cpu":
            batch = {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}
        return batch

    def subset(self, limit: int, seed: int) -> Split:
        """At most `limit` rows, a fixed random choice: a cheap, stable view of a large split."""
        if len(self) <= limit:
            return self
        rows = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:limit]
        rows = rows.sort().values
        return Split({name: tensor[rows] for name, tensor in self.tensors.items()})

    def batches(self, size: int, device: torch.device | str = "cpu",
                ids: torch.Tensor | None = None):
        """Consecutive batches of `ids` (default: the whole split, in order)."""
        ids = torch.arange(len(self)) if ids is None else ids
        for start in range(0, len(ids), size):
            yield self.take(ids[start:start + size], device)


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

    def splits(self) -> dict[str, Split]:
        """`train`, `val` and `test`, identical on every rank (a function of the seed)."""

    def build_model(self) -> torch.nn.Module: ...

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-sample losses, shape [batch]; the trainer normalises by the global batch."""

    def evaluate(self, model: torch.nn.Module, split: Split, device: torch.device,
                 shard: Shard = Shard()) -> dict:
        """Metrics of one split over all shards: plain floats, plus optional lists
        (per-class values, matrices). Every process of a sharded evaluation calls it."""
