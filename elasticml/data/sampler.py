"""Data order as a function of (seed, epoch, samples consumed), never of the world size.

Each epoch is one global permutation of the training split. Every step takes the next
`global_batch` positions of it, and the ranks present split that batch among themselves. So
whatever crashes, joins or losses happen between steps, each sample is used exactly once per
epoch: a resumed run continues from the same position of the same permutation. The last batch
of an epoch is shorter rather than spilling into the next epoch.

`ElasticSampler` is the data cursor, and the only one: it is part of the training state and
moves when a step completes. `ElasticBatchSampler` is what a `DataLoader` iterates: this rank's
micro-batches of every step from a given cursor on, computed by the same function the loop
uses, so DataLoader workers may prefetch ahead without holding any position of their own. A
restart (any resize is one) builds a new loader from the restored cursor.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

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


@dataclass(frozen=True)
class RankShare:
    """What one rank does with one global batch."""

    ids: torch.Tensor
    """This rank's sample ids (one stand-in id when the short last batch leaves it none)."""
    weight: float
    """1, or 0 for the stand-in: the rank still takes part in the collective, adding nothing."""
    chunks: tuple[torch.Tensor, ...]
    """`ids` cut into micro-batches."""


def rank_share(ids: torch.Tensor, world: int, rank: int, micro_batch: int) -> RankShare:
    """Rank `rank`'s contiguous slice of a global batch, cut into micro-batches."""
    base, extra = divmod(len(ids), world)
    start = rank * base + min(rank, extra)
    mine, weight = ids[start:start + base + (rank < extra)], 1.0
    if len(mine) == 0:  # a short last batch of the epoch: take part with a zero weight
        mine, weight = ids[:1], 0.0
    return RankShare(mine, weight, tuple(mine.split(micro_batch)))


class ElasticBatchSampler:
    """This rank's micro-batches, step after step, from the cursor `start` on (endless)."""

    def __init__(self, cursor: ElasticSampler, global_batch: int, micro_batch: int,
                 world: int, rank: int) -> None:
        self.start = cursor.state_dict()
        self.global_batch, self.micro_batch = global_batch, micro_batch
        self.world, self.rank = world, rank

    def __iter__(self) -> Iterator[list[int]]:
        cursor = ElasticSampler(self.start["num_samples"], self.start["seed"])
        cursor.load_state_dict(self.start)
        while True:
            share = rank_share(cursor.next_batch(self.global_batch), self.world, self.rank,
                               self.micro_batch)
            for chunk in share.chunks:
                yield chunk.tolist()
