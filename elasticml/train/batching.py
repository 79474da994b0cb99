"""How one global batch is shared among the ranks present (DESIGN decision 7).

`fixed` (default): the global batch never changes; each rank takes an equal share (the first
`global % world` ranks one sample more) and the loss is normalised by the global batch, so a
step computes the same gradient at any world size. A share larger than `micro_batch_size` is
accumulated in several micro-batches.

`linear`: each rank keeps `global_batch_size / min world size` samples, so the global batch
grows with the world and the learning rate is scaled by the same factor (Goyal et al.).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from elasticml.recipe.schema import TrainerConfig


@dataclass(frozen=True)
class BatchPlan:
    world_size: int
    global_batch: int
    shares: tuple[int, ...]
    """Samples each rank takes from the global batch, by rank."""
    micro_batch: int
    accumulation: int
    """Micro-batches of the rank with the largest share."""
    lr_scale: float

    def share_range(self, rank: int) -> tuple[int, int]:
        """[start, stop) of this rank's slice of the global batch."""
        start = sum(self.shares[:rank])
        return start, start + self.shares[rank]


def plan_batches(trainer: TrainerConfig, world_size: int, min_world_size: int) -> BatchPlan:
    if trainer.batch_policy == "linear":
        if trainer.global_batch_size % min_world_size:
            raise ValueError(
                f"trainer.global_batch_size={trainer.global_batch_size} must be a multiple of "
                f"the smallest world size ({min_world_size}) with batch_policy=linear"
            )
        per_rank = trainer.global_batch_size // min_world_size
        global_batch, lr_scale = per_rank * world_size, world_size / min_world_size
    else:
        global_batch, lr_scale = trainer.global_batch_size, 1.0
    if global_batch < world_size:
        raise ValueError(
            f"trainer.global_batch_size={global_batch} is smaller than the world size "
            f"{world_size}: some ranks would get no samples; raise the batch or lower the "
            "maximum nodes / nproc_per_node"
        )
    base, extra = divmod(global_batch, world_size)
    shares = tuple(base + (rank < extra) for rank in range(world_size))
    micro = min(trainer.micro_batch_size or shares[0], shares[0])
    return BatchPlan(world_size, global_batch, shares, micro, math.ceil(shares[0] / micro),
                     lr_scale)


def plans_for_sizes(trainer: TrainerConfig, world_sizes: list[int]) -> list[BatchPlan]:
    """One plan per world size the job may run at; ValueError for a size it cannot serve."""
    return [plan_batches(trainer, size, min(world_sizes)) for size in world_sizes]
