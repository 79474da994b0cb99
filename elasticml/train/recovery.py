"""At every (re)start, the ranks agree on the newest state any of them holds (decision 5).

Each rank reports the newest intact checkpoint on its own disk; the highest step wins and the
lowest rank holding it broadcasts the whole state. So a survivor's last completed step
reaches every rank, and a node that joins with an empty disk gets the state over the network:
no shared filesystem is needed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from elasticml.train.checkpoint import CheckpointManager, decode, encode

NOTHING = -1


@dataclass
class Agreed:
    step: int
    """Newest step found anywhere; NOTHING when every disk is empty."""
    source_rank: int
    state: dict | None
    local_step: int
    seconds: float


def agree_on_state(manager: CheckpointManager, device: torch.device) -> Agreed:
    started = time.perf_counter()
    newest = manager.newest()
    local_step, local_state = newest if newest else (NOTHING, None)
    rank, world = dist.get_rank(), dist.get_world_size()
    steps = torch.full((world,), NOTHING, dtype=torch.long, device=device)
    steps[rank] = local_step
    if world > 1:
        # MAX over vectors that are NOTHING except at each rank's own slot: an all-gather.
        dist.all_reduce(steps, op=dist.ReduceOp.MAX)
    best = int(steps.max())
    if best == NOTHING:
        return Agreed(NOTHING, -1, None, local_step, time.perf_counter() - started)
    source = int((steps == best).nonzero()[0])
    if world > 1 and bool((steps != best).any()):
        state = _broadcast_state(local_state if rank == source else None, source, device)
    else:  # every rank holds the newest step already: each reads its own copy
        state = local_state
    return Agreed(best, source, state, local_step, time.perf_counter() - started)


def _broadcast_state(state: dict | None, source: int, device: torch.device) -> dict:
    blob = encode(state) if state is not None else b""
    size = torch.tensor([len(blob)], dtype=torch.long, device=device)
    dist.broadcast(size, src=source)
    if state is not None:
        buffer = torch.frombuffer(bytearray(blob), dtype=torch.uint8).to(device)
    else:
        buffer = torch.empty(int(size), dtype=torch.uint8, device=device)
    dist.broadcast(buffer, src=source)
    if state is not None:
        return state
    return decode(buffer.cpu().numpy().tobytes(), f"state from rank {source}")
