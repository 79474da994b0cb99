"""A hand-written DDP loop with `DistributedSampler` + `DataLoader`: the plain way to train a
Dataset on several processes, which elasticml's DataLoader path is measured against.

Same Dataset, model, loss, optimizer, global batch and loader settings as a recipe with its
own data (`data.train`, `model`, `loss`, `optimizer`), none of elasticml's trainer:

    torchrun --standalone --nproc-per-node 2 scripts/ddp_loader_baseline.py RECIPE \
        --steps 150 --warmup 30 --out result.json [key=value ...]

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
from torch.utils.data import DataLoader, DistributedSampler

from elasticml.components import Code, instantiate
from elasticml.recipe.load import load_recipe


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    recipe = load_recipe(args.recipe, args.overrides)
    code = Code(recipe.run.recipe_dir)
    dataset = instantiate(recipe.data.train, key="data.train", code=code)
    torch.manual_seed(recipe.run.seed)
    model = DistributedDataParallel(instantiate(recipe.model, key="model", code=code))
    loss_fn = instantiate(recipe.loss, key="loss", code=code)
    optimizer = instantiate(recipe.optimizer, model.parameters(), key="optimizer", code=code)
    optimizer = optimizer() if callable(optimizer) else optimizer
    settings = recipe.data.loader
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True,
                                 seed=recipe.run.seed, drop_last=True)
    loader = DataLoader(dataset, batch_size=recipe.trainer.global_batch_size // world,
                        sampler=sampler, num_workers=settings.num_workers,
                        persistent_workers=settings.persistent_workers and settings.num_workers > 0,
                        prefetch_factor=settings.prefetch_factor, drop_last=True)
    marks: dict[int, float] = {}
    step, epoch = 0, 0
    while step < args.steps:
        sampler.set_epoch(epoch)
        for inputs, target in loader:
            loss = loss_fn(model(inputs), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if step in (1, args.warmup, args.steps):
                marks[step] = time.time()
            if step == args.steps:
                break
        epoch += 1
    if rank == 0:
        seconds = marks[args.steps] - marks[args.warmup]
        samples = (args.steps - args.warmup) * recipe.trainer.global_batch_size
        with open(args.out, "w") as handle:
            json.dump({"first_step_t": marks[1], "samples_per_s": samples / seconds}, handle)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
