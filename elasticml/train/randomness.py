"""Random streams (dropout, augmentation) as a function of (seed, step, rank).

Before every training step, each rank seeds torch (CPU and every CUDA device), NumPy's global
generator and Python's `random` from a hash of the run's seed, the step about to run and its
rank. So the ranks draw different masks from one another, and a resumed run draws at step k
exactly what an undisturbed run draws at step k.

Why derive rather than save and restore each rank's generator states: a state must be right
at every moment a checkpoint can be taken, and the emergency save after a failed collective
happens after a step was rolled back halfway, when the generators have already moved on; a
node that joins has no states of its own to restore, and after a resize the rank that held a
stream may not exist any more. A stream derived from (seed, step, rank) needs nothing saved
and is right in all of those cases, at the cost of a reseed per step (microseconds).

What it does not give: the same masks at another world size (rank r draws the stream of rank
r, whatever the world), so with dropout a resize changes the maths slightly, as it does with
torch's own per-rank seeding.
"""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch


def step_seed(seed: int, step: int, rank: int) -> int:
    """A 63-bit seed, different for every (seed, step, rank)."""
    digest = hashlib.sha256(f"elasticml:{seed}:{step}:{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def seed_step(seed: int, step: int, rank: int) -> None:
    """Seed every generator a training step may draw from: torch's CPU generator and, once
    CUDA is in use, every CUDA device's (`torch.manual_seed` would also probe other device
    types, ~0.1 ms a step), NumPy's global generator and Python's `random`."""
    value = step_seed(seed, step, rank)
    torch.default_generator.manual_seed(value)
    if torch.cuda.is_initialized():
        torch.cuda.manual_seed_all(value)
    np.random.seed(value % 2**32)
    random.seed(value)
