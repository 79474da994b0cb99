"""`elasticml eval --nproc N`: score one split in N local processes, each on its shard.

The processes form a gloo process group (nccl when each has a GPU) through a file store in a
private temporary folder: no port to choose, nothing to clean up on another machine. Each
process reads the checkpoint itself (it is verified again: a few milliseconds; an encrypted
one with the cipher the command opened it with, handed over the spawn pipe, never the
command line), scores its
contiguous shard of the split, and the task's torchmetrics objects combine their states on
`compute`; rank 0 hands the numbers back through a JSON file (or the one-line `UserError`
every rank met). Threads are split evenly so N processes do not oversubscribe the cores.
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import timedelta
from pathlib import Path

from elasticml.errors import CorruptCheckpoint, UserError
from elasticml.recipe.schema import Recipe


def score_in_processes(checkpoint: Path, recipe: Recipe, split: str, nproc: int,
                       trust_code: bool = False, cipher=None) -> dict:
    import torch.multiprocessing as mp

    from elasticml.recipe.load import recipe_to_dict

    with tempfile.TemporaryDirectory(prefix="elasticml-eval-") as folder:
        out = Path(folder) / "metrics.json"
        mp.start_processes(_worker, args=(nproc, str(checkpoint), recipe_to_dict(recipe), split,
                                          folder, trust_code, cipher),
                           nprocs=nproc, join=True, start_method="spawn")
        problem = Path(folder) / "error.txt"
        if problem.exists():
            raise UserError(problem.read_text())
        return json.loads(out.read_text())


def _worker(rank: int, world: int, checkpoint: str, recipe: dict, split: str,
            folder: str, trust_code: bool, cipher) -> None:
    import torch
    import torch.distributed as dist

    from elasticml.evaluate.scoring import eval_device, score_shard
    from elasticml.recipe.load import recipe_from_dict
    from elasticml.train.sharded_checkpoint import read_any_checkpoint

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    resolved = recipe_from_dict(recipe)
    device = eval_device(resolved, rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    try:  # read before the group exists: a sharded checkpoint is read by this process alone
        state = read_any_checkpoint(checkpoint, cipher) if cipher else \
            read_any_checkpoint(checkpoint)
    except UserError as err:
        state, problem = None, err
    except (CorruptCheckpoint, OSError) as err:  # removed or damaged since it was chosen
        state, problem = None, UserError(f"{checkpoint}: {err}")
    dist.init_process_group(backend, init_method=f"file://{folder}/store", rank=rank,
                            world_size=world, timeout=timedelta(minutes=10))
    try:
        if state is None:
            raise problem
        metrics = score_shard(state, resolved, split, rank, world, device, trust_code)
        if rank == 0:
            Path(folder, "metrics.json").write_text(json.dumps(metrics))
    except UserError as err:  # every rank meets the same problem before any collective
        Path(folder, "error.txt").write_text(str(err))
    finally:
        dist.destroy_process_group()
