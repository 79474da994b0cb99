"""How the model is spread over the ranks: `trainer.strategy` ddp, fsdp or hsdp.

ddp wraps the model in `DistributedDataParallel`: every rank holds all of it. fsdp and hsdp
apply FSDP2 (`fully_shard`) on an explicit device mesh: a one-dimensional mesh over every rank
(fsdp), or (nodes, ranks per node) with the first dimension replicated and the second sharded
(hsdp). The mesh is always named explicitly, with the device type the worker trains on: torch's
default mesh picks CUDA wherever a GPU is visible, which gloo cannot drive.

The units FSDP shards one at a time are the model's blocks: every module that is a member of
a `ModuleList` or `Sequential` and holds parameters of its own subtree (or, when the model has
no such container, its direct children with parameters), then the root for what is left. The
same blocks are recomputed in the backward pass with `trainer.activation_checkpointing`.

FSDP2 averages gradients over the ranks in its reduce-scatter, as DDP does in its all-reduce,
so the trainer's loss scaling (sum over the global batch) is the same for every strategy.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

SHARDED = ("fsdp", "hsdp")


@dataclass
class Layout:
    """The strategy and, for fsdp/hsdp, the mesh shape and its dimension names."""

    strategy: str
    shape: tuple[int, ...] = ()
    names: tuple[str, ...] = ()

    @property
    def sharded(self) -> bool:
        return self.strategy in SHARDED

    def describe(self) -> str:
        if not self.sharded:
            return self.strategy
        return f"{self.strategy} mesh " + " x ".join(
            f"{size} {name}" for size, name in zip(self.shape, self.names, strict=True))


def layout_for(strategy: str, world_size: int, local_world_size: int) -> Layout:
    if strategy == "fsdp":
        return Layout(strategy, (world_size,), ("shard",))
    if strategy == "hsdp":
        if world_size % local_world_size:
            raise ValueError(f"hsdp needs the same number of ranks on every node: "
                             f"{world_size} ranks are not a multiple of {local_world_size}")
        return Layout(strategy, (world_size // local_world_size, local_world_size),
                      ("replicate", "shard"))
    return Layout(strategy)


def local_world_size() -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))


def blocks(model: nn.Module) -> list[nn.Module]:
    """The units to shard (and recompute): members of the model's containers that hold
    parameters, outermost first; the direct children with parameters when there is none."""
    found, claimed = [], set()
    for module in model.modules():
        if id(module) in claimed or not isinstance(module, nn.ModuleList | nn.Sequential):
            continue
        for member in module.children():
            if any(True for _ in member.parameters()) and id(member) not in claimed:
                found.append(member)
                claimed.update(id(m) for m in member.modules())
    if not found:
        found = [c for c in model.children() if any(True for _ in c.parameters())]
    return [b for b in found if b is not model]


def recompute_blocks(model: nn.Module) -> None:
    """Activation checkpointing: each block's activations are recomputed in the backward."""
    from torch.distributed._composable import checkpoint

    for block in blocks(model):
        checkpoint(block)


def distribute(model: nn.Module, layout: Layout, device: torch.device,
               precision: str) -> tuple[nn.Module, object]:
    """(the model each rank trains, the device mesh or None): `model` itself sharded in place
    (fsdp/hsdp), a DDP wrapper around it (ddp on more than one rank), or `model` (one rank)."""
    if layout.sharded:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = init_device_mesh(device.type, layout.shape, mesh_dim_names=layout.names)
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
            if precision == "bf16" else MixedPrecisionPolicy()
        for block in blocks(model):
            fully_shard(block, mesh=mesh, mp_policy=policy)
        fully_shard(model, mesh=mesh, mp_policy=policy)
        return model, mesh
    if dist.get_world_size() > 1:
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids), None
    return model, None


def gradient_sync(model: nn.Module, wrapped: nn.Module, sync: bool):
    """A context in which backward passes reduce gradients (`sync`) or only accumulate them:
    DDP's `no_sync`, FSDP2's `set_requires_gradient_sync`."""
    if sync or dist.get_world_size() == 1:
        return contextlib.nullcontext()
    if hasattr(model, "set_requires_gradient_sync"):
        return _fsdp_accumulating(model)
    return wrapped.no_sync()


@contextlib.contextmanager
def _fsdp_accumulating(model):
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def whole_copy(model: nn.Module, build) -> nn.Module:
    """An unsharded copy of a sharded `model` on every rank (for evaluation: a rank can then
    score its own share of a split without lock-step collectives). Collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    weights = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    device = next(iter(weights.values())).device if weights else torch.device("cpu")
    copy = build().to(device)
    copy.load_state_dict(weights)
    return copy


def resident_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes of parameters and optimizer state this rank holds (its shards under fsdp)."""
    def local(tensor: torch.Tensor) -> int:
        tensor = getattr(tensor, "_local_tensor", tensor)
        return tensor.numel() * tensor.element_size()

    params = sum(local(p) for p in model.parameters())
    state = sum(local(v) for s in optimizer.state.values() for v in s.values()
                if isinstance(v, torch.Tensor))
    return {"params_bytes": params, "optimizer_bytes": state}
