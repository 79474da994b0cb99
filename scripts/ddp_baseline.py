"""A hand-written DDP (or FSDP2) training loop: the strongest plain alternative elasticml is
measured against.

Same task, model, data, global batch and optimizer as a recipe, none of elasticml's trainer:

    torchrun --standalone --nproc-per-node 2 scripts/ddp_baseline.py RECIPE --steps 200 \
        --warmup 20 --out result.json [--strategy fsdp] [key=value ...]

`--strategy fsdp`: `fully_shard` on each member of the model's containers and on the root,
over an explicit CPU mesh of every rank, as torch's FSDP2 tutorial writes it.

Rank 0 writes {"first_step_t": unix time the first step finished, "samples_per_s": steady
state between step `warmup` and the last step}.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from elasticml.recipe.load import load_recipe
from elasticml.tasks import build_task


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--out", required=True)
    parser.add_argument("--strategy", choices=("ddp", "fsdp"), default="ddp")
    args = parser.parse_args()

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    recipe = load_recipe(args.recipe, args.overrides)
    task = build_task(recipe)
    train = task.splits()["train"]
    torch.manual_seed(recipe.run.seed)
    model = task.build_model()
    if args.strategy == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (world,))
        for container in [m for m in model.modules()
                          if isinstance(m, torch.nn.ModuleList | torch.nn.Sequential)]:
            for member in container.children():
                if any(True for _ in member.parameters()):
                    fully_shard(member, mesh=mesh)
        fully_shard(model, mesh=mesh)
    else:
        model = DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.optimizer.lr,
                                  weight_decay=recipe.optimizer.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.steps)
    per_rank = recipe.trainer.global_batch_size // world
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(recipe.run.seed))
    marks: dict[int, float] = {}
    for step in range(1, args.steps + 1):
        start = ((step - 1) * per_rank * world) % max(1, len(train) - per_rank * world)
        ids = order[start + rank * per_rank:start + (rank + 1) * per_rank]
        loss = task.loss(model, train.take(ids)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step in (1, args.warmup, args.steps):
            marks[step] = time.time()
    if rank == 0:
        seconds = marks[args.steps] - marks[args.warmup]
        samples = (args.steps - args.warmup) * per_rank * world
        with open(args.out, "w") as handle:
            json.dump({"first_step_t": marks[1], "samples_per_s": samples / seconds}, handle)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
