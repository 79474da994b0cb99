"""At every (re)start, the ranks agree on the newest state any of them holds (decision 5).

Each rank reports the newest intact checkpoint on its own disk; the highest step wins and the
lowest rank holding it broadcasts the whole state. So a survivor's last completed step
reaches every rank, and a node that joins with an empty disk gets the state over the network:
no shared filesystem is needed.

The broadcast state is sealed with the job key (`jobkey.py`, read from `ELASTICML_JOB_KEY`,
which the agent sets for its workers): a receiver opens it only if its HMAC tag verifies, so
a process that got into the process group without the key cannot hand the workers another
model. A worker started without any key (plain torchrun by hand) sends and takes the state
unsigned, as a receiver without a key cannot check a tag anyway.

With `trainer.encrypt_checkpoints` the broadcast bytes are also encrypted with the checkpoint
key (`encryption.py`) before they are sealed: a receiver with encryption on takes only a state
encrypted under its own key.

The best validation metric is part of the agreed state; `agree_on_best` also folds in what
`best.pt` holds on every node's disk, so that a state older than the newest `best.pt` (a
fallback to a periodic checkpoint) never lets a worse model replace it. `share` hands any
state some ranks hold (the best model's weights, at an early stop) to the ranks without it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from elasticml.errors import UserError
from elasticml.jobkey import ForgedValue, seal, unseal
from elasticml.train.checkpoint import CheckpointManager, decode, encode
from elasticml.train.encryption import PLAIN, Cipher

NOTHING = -1


@dataclass
class Agreed:
    step: int
    """Newest step found anywhere; NOTHING when every disk is empty."""
    source_rank: int
    state: dict | None
    local_step: int
    seconds: float


def agree_on_state(manager: CheckpointManager, device: torch.device,
                   key: bytes | None = None) -> Agreed:
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
        state = _broadcast_state(local_state if rank == source else None, source, device, key,
                                 manager.cipher)
    else:  # every rank holds the newest step already: each reads its own copy
        state = local_state
    return Agreed(best, source, state, local_step, time.perf_counter() - started)


def share(local: dict | None, device: torch.device, key: bytes | None,
          cipher: Cipher = PLAIN) -> tuple[dict | None, int]:
    """(`local` of the lowest rank holding one, that rank) on every rank; (None, -1) when no
    rank holds one. Broadcast only when some rank lacks it."""
    rank, world = dist.get_rank(), dist.get_world_size()
    held = torch.zeros(world, dtype=torch.long, device=device)
    held[rank] = int(local is not None)
    if world > 1:
        dist.all_reduce(held)
    holders = held.nonzero()
    if len(holders) == 0:
        return None, -1
    source = int(holders[0])
    if world > 1 and not bool(held.all()):
        local = _broadcast_state(local if rank == source else None, source, device, key, cipher)
    return local, source


def pack_state(state: dict, key: bytes | None, cipher: Cipher = PLAIN) -> bytes:
    """The bytes a rank broadcasts: the checkpoint encoding (encrypted with encryption on),
    sealed when there is a job key."""
    blob = encode(state, cipher)
    return seal(key, blob) if key else blob


def open_state(blob: bytes, key: bytes | None, source: int, cipher: Cipher = PLAIN) -> dict:
    """The state in a broadcast blob; a `UserError` when it does not carry the job key."""
    if key:
        try:
            blob = unseal(key, blob)
        except ForgedValue as err:
            raise UserError(
                f"refused the training state from rank {source}: it does not carry this job's "
                f"key ({err}); start every node with the same job key (ELASTICML_JOB_KEY or "
                "elastic.rdzv.job_key_file)") from None
    return decode(blob, f"the training state from rank {source}", cipher)


def _broadcast_state(state: dict | None, source: int, device: torch.device,
                     key: bytes | None, cipher: Cipher) -> dict:
    blob = pack_state(state, key, cipher) if state is not None else b""
    size = torch.tensor([len(blob)], dtype=torch.long, device=device)
    dist.broadcast(size, src=source)
    if state is not None:
        buffer = torch.frombuffer(bytearray(blob), dtype=torch.uint8).to(device)
    else:
        buffer = torch.empty(int(size), dtype=torch.uint8, device=device)
    dist.broadcast(buffer, src=source)
    if state is not None:
        return state
    return open_state(buffer.cpu().numpy().tobytes(), key, source, cipher)


def agree_on_best(on_disk: dict | None, agreed: dict | None, metric: str, higher: bool,
                  device: torch.device) -> dict | None:
    """The run's best so far, the same on every rank: the agreed state's, or a better one that
    some node's `best.pt` holds (`on_disk`, this rank's). One small all-reduce."""
    world, rank = dist.get_world_size(), dist.get_rank()
    rows = torch.zeros((world, 3), dtype=torch.float64, device=device)
    if on_disk and on_disk.get("metric") == metric:
        rows[rank] = torch.tensor([1.0, float(on_disk["value"]), float(on_disk["step"])],
                                  dtype=torch.float64)
    if world > 1:
        dist.all_reduce(rows)  # every other rank's row is zero: an all-gather
    disks = [{"metric": metric, "value": float(value), "step": int(step)} if has else None
             for has, value, step in rows.cpu().tolist()]
    return choose_best(agreed, disks, metric, higher)


def choose_best(agreed: dict | None, disks: list[dict | None], metric: str,
                higher: bool) -> dict | None:
    """The best of the agreed state's best and the disks' (only those of `metric`); on a tie
    the agreed state's stays, so every rank picks the same one."""
    best = agreed if agreed and agreed.get("metric") == metric else None
    for found in disks:
        if found and found.get("metric") == metric and is_better(found["value"], best, higher):
            best = found
    return best


def is_better(value: float, best: dict | None, higher: bool) -> bool:
    """Strictly better than `best` (anything is better than nothing)."""
    if best is None:
        return True
    return value > best["value"] if higher else value < best["value"]
