"""In-memory data as a map-style Dataset: the bundled tasks' splits ride the same DataLoader.

A `TensorSplit` holds equal-length tensors by name. `dataset[i]` is one sample (a dict), and
`__getitems__` (which `DataLoader` calls with a whole batch of ids when a dataset has it)
returns the batch as one dict of tensors with the ids as `index`: one gather per tensor
instead of a Python loop, so in-memory tasks lose nothing by going through a DataLoader. Its
`collate` passes that dict through.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset


class TensorSplit(Dataset):
    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {name: tensor[index] for name, tensor in self.tensors.items()}

    def __getitems__(self, ids: list[int]) -> dict[str, torch.Tensor]:
        return self.take(torch.as_tensor(ids, dtype=torch.long))

    @staticmethod
    def collate(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return batch

    def take(self, ids: torch.Tensor, device: torch.device | str = "cpu") -> dict:
        """The rows `ids` as one batch, with the ids as `index`."""
        batch = {name: tensor[ids] for name, tensor in self.tensors.items()}
        batch["index"] = ids
        if str(device) != "cpu":
            batch = {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}
        return batch

    def subset(self, limit: int, seed: int) -> TensorSplit:
        """At most `limit` rows, a fixed random choice: a cheap, stable view of a large split."""
        if len(self) <= limit:
            return self
        rows = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:limit]
        rows = rows.sort().values
        return TensorSplit({name: tensor[rows] for name, tensor in self.tensors.items()})

    def batches(self, size: int, device: torch.device | str = "cpu",
                ids: torch.Tensor | None = None):
        """Consecutive batches of `ids` (default: the whole split, in order)."""
        ids = torch.arange(len(self)) if ids is None else ids
        for start in range(0, len(ids), size):
            yield self.take(ids[start:start + size], device)
