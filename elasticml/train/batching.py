"""How one global batch is shared among the ranks present (DESIGN decision 7).

`fixed` (default): the global batch never changes; each rank takes an equal share (the first
`global % world` ranks one sample more) and the loss is normalised by the global batch, so a
step computes the same gradient at any world size. A share larger than `micro_batch_size` is
accumulated in several micro-batches.

`linear`: each rank keeps `global_batch_size / min world size` samples, so the global batch
grows with the world and the learning rate is scaled by the same factor (Goyal et al.).

`Horizon` says how long training lasts in units no world size changes: optimizer steps with
`trainer.max_steps`, samples consumed with `trainer.epochs` (with the linear policy the number
of steps an epoch takes depends on the world sizes the run went through).
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


@dataclass(frozen=True)
class Horizon:
    """The end of training and the position of the learning-rate schedule.

    The schedule's position is counted in steps of the recipe's `global_batch_size` (the batch
    at the smallest world): with `epochs` it is `samples consumed / global_batch_size`, epoch
    by epoch (an epoch's short last batch counts as a whole step, as it does in a run at the
    smallest world). With the fixed policy that is exactly the step count, as it is with
    `max_steps` for either policy."""

    split_size: int
    nominal_batch: int
    max_steps: int | None
    samples: int | None
    """Samples to consume (`ceil(epochs x split size)`); None with `max_steps`."""

    @classmethod
    def of(cls, trainer: TrainerConfig, split_size: int) -> Horizon:
        samples = None if trainer.max_steps else math.ceil(trainer.epochs * split_size)
        return cls(split_size, trainer.global_batch_size, trainer.max_steps, samples)

    def done(self, step: int, samples_seen: int) -> bool:
        if self.samples is None:
            return step >= self.max_steps
        return samples_seen >= self.samples

    def position(self, step: int, samples_seen: int) -> float:
        if self.samples is None:
            return float(step)
        epoch, offset = divmod(samples_seen, self.split_size)
        return epoch * math.ceil(self.split_size / self.nominal_batch) + \
            offset / self.nominal_batch

    @property
    def schedule_steps(self) -> int:
        """Length of the schedule, in the same steps as `position`."""
        if self.samples is None:
            return self.max_steps
        return self._steps_from(0, self.nominal_batch)

    def total_steps(self, step: int, samples_seen: int, global_batch: int) -> int:
        """Steps the run will have taken at its end if `global_batch` stays as it is now."""
        if self.samples is None:
            return self.max_steps
        return step + self._steps_from(samples_seen, global_batch)

    def _steps_from(self, samples_seen: int, batch: int) -> int:
        steps, epoch, offset = 0, *divmod(samples_seen, self.split_size)
        while epoch * self.split_size + offset < self.samples:
            end = min(self.split_size, self.samples - epoch * self.split_size)
            steps += math.ceil((end - offset) / batch)
            epoch, offset = epoch + 1, 0
        return steps


def plans_for_sizes(trainer: TrainerConfig, world_sizes: list[int]) -> list[BatchPlan]:
    """One plan per world size the job may run at; ValueError for a size it cannot serve."""
    return [plan_batches(trainer, size, min(world_sizes)) for size in world_sizes]
