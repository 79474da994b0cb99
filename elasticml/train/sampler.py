"""Data order as a function of (seed, epoch, samples consumed), never of the world size.

Each epoch is one global permutation of the training split. Every step takes the next
`global_batch` positions of it, and the ranks present split that batch among themselves. So
whatever crashes, joins or losses happen between steps, each sample is used exactly once per
epoch: a resumed run continues from the same position of the same permutation. The last batch
of an epoch is shorter rather than spilling into the next epoch.
"""

from __future__ import annotations

import torch


class ElasticSampler:
    def __init__(self, num_samples: int, seed: int) -> None:
        if num_samples <= 0:
            raise ValueError("the training split is empty")
        self.num_samples, self.seed = num_samples, seed
        self.epoch, self.offset = 0, 0
        self._cached: tuple[int, torch.Tensor] | None = None

    def permutation(self, epoch: int) -> torch.Tensor:
        if self._cached is None or self._cached[0] != epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._cached = (epoch, torch.randperm(self.num_samples, generator=generator))
        return self._cached[1]

    def next_batch(self, global_batch: int) -> torch.Tensor:
        """Sample ids of the next global batch (identical on every rank); advances the position."""
        order = self.permutation(self.epoch)
        ids = order[self.offset:self.offset + global_batch]
        self.offset += len(ids)
        if self.offset >= self.num_samples:
            self.epoch, self.offset = self.epoch + 1, 0
        return ids

    @property
    def samples_seen(self) -> int:
        return self.epoch * self.num_samples + self.offset

    @property
    def progress(self) -> float:
        """Epochs completed, fractional."""
        return self.samples_seen / self.num_samples

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "offset": self.offset, "seed": self.seed,
                "num_samples": self.num_samples}

    def load_state_dict(self, state: dict) -> None:
        if state["num_samples"] != self.num_samples or state["seed"] != self.seed:
            raise ValueError("checkpoint was written for another data set or seed")
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])
