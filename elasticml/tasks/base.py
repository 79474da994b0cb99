"""What a task gives the trainer: data splits, a model, a per-sample loss and its metrics.

The trainer owns the loop; a task owns everything that depends on the data. Data lives in
memory as tensors (`Split`), indexed by global sample ids, so the elastic sampler can hand any
rank any slice of the global order without a DataLoader.
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

    def take(self, ids: torch.Tensor, device: torch.device | str = "cpu") -> dict:
        batch = {name: tensor[ids] for name, tensor in self.tensors.items()}
        batch["index"] = ids
        if str(device) != "cpu":
            batch = {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}
        return batch

    def batches(self, size: int, device: torch.device | str = "cpu"):
        for start in range(0, len(self), size):
            yield self.take(torch.arange(start, min(start + size, len(self))), device)


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

    def evaluate(self, model: torch.nn.Module, split: Split, device: torch.device) -> dict:
        """Metrics of one split: plain floats, plus optional lists (per-class, matrices)."""
