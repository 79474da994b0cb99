"""DataLoaders over any map-style Dataset: training batches in the elastic order, and the
shards of an evaluation.

Training: `DataLoader(dataset, batch_sampler=ElasticBatchSampler(...))` with the recipe's
`data.loader` settings (workers, pinned memory, persistent workers, prefetch). The loader is
built once per attempt from the restored cursor; `TrainBatches.next` hands out one
micro-batch at a time and checks that it holds the samples the loop expects (its size, and its
`index` entry where a batch has one), so the loop and the loader cannot drift apart unnoticed.

Data errors are input errors: the order is a function of the seed and the position, so a
restart would read the very same samples and fail again. A batch that cannot be read or
collated (a bad row, a sample the collate function cannot stack) ends the job with one line
(`UserError`) instead of being retried; I/O errors and killed loader workers are not input
errors and go through the normal restart.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from collections.abc import Callable, Mapping, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Subset, default_collate

from elasticml.data.sampler import ElasticBatchSampler, ElasticSampler
from elasticml.data.tensors import TensorSplit
from elasticml.errors import UserError


def collate_for(dataset: Dataset, collate_fn: Callable | None) -> Callable:
    """The recipe's collate function, else the dataset's own (`TensorSplit`), else torch's."""
    return collate_fn or getattr(dataset, "collate", None) or default_collate


def loader_options(settings, device: torch.device) -> dict:
    """DataLoader keyword arguments from the recipe's `data.loader` section."""
    workers = settings.num_workers
    options = {"num_workers": workers, "pin_memory": settings.pin_memory and device.type == "cuda"}
    if workers:
        # Forked, whatever the process's own default: a process started by `spawn` (eval
        # --nproc) would otherwise spawn loader workers that re-import the user's modules
        # without the recipe's folder on their path.
        if "fork" in multiprocessing.get_all_start_methods():
            options["multiprocessing_context"] = "fork"
        options["persistent_workers"] = settings.persistent_workers
        options["worker_init_fn"] = leave_the_stop_to_the_trainer
        if settings.prefetch_factor is not None:
            options["prefetch_factor"] = settings.prefetch_factor
    return options


def leave_the_stop_to_the_trainer(worker_id: int) -> None:
    """A loader worker takes a process group of its own. A stop (or a regroup for a newcomer)
    signals the trainer's whole process group; a loader worker that died of it made torch's
    SIGCHLD handler raise in the trainer at whatever line it was on, the save of the last
    completed step included (a join then lost its steps). Out of that group, the trainer stops
    at a step boundary and saves, and its workers end as torch ends them: told by their
    trainer, terminated by it (a SIGTERM to the worker itself still kills it, so an exit with a
    live iterator does not wait on them), or on their own within seconds of its death."""
    os.setpgid(0, 0)


class TrainBatches:
    """This rank's training micro-batches from the cursor on, already on the device."""

    def __init__(self, dataset: Dataset, cursor: ElasticSampler, plan, world: int, rank: int,
                 settings, collate_fn: Callable | None, device: torch.device) -> None:
        sampler = ElasticBatchSampler(cursor, plan.global_batch, plan.micro_batch, world, rank)
        # Loader workers' seeds (augmentation) follow the seed, the rank and the position.
        seed = _seed(cursor.seed, rank, cursor.samples_seen)
        self.device = device
        self.loader = DataLoader(dataset, batch_sampler=sampler,
                                 collate_fn=collate_for(dataset, collate_fn),
                                 generator=torch.Generator().manual_seed(seed),
                                 **loader_options(settings, device))
        self._iterator = iter(self.loader)

    def next(self, ids: torch.Tensor):
        """The next micro-batch, which must hold the samples `ids` (checked by its size, and by
        its `index` entry when it has one, as in-memory splits do)."""
        try:
            batch = next(self._iterator)
        except (OSError, RuntimeError, MemoryError):
            raise
        except Exception as err:  # noqa: BLE001 - the data itself: a restart cannot fix it
            raise UserError(f"data: a training batch could not be read: {_one_line(err)}") \
                from None
        size = batch_size(batch)
        if size is not None and size != len(ids):
            raise RuntimeError(f"the loader gave a batch of {size} samples, the step expected "
                               f"{len(ids)}: a batch must hold one entry per sample id")
        index = batch.get("index") if isinstance(batch, Mapping) else None
        if isinstance(index, torch.Tensor) and not torch.equal(index.cpu().long(), ids):
            raise UserError("data: a batch's 'index' entry is not the ids of the samples in it "
                            "(an 'index' entry must be each sample's own index; rename it)")
        return to_device(batch, self.device)

    def close(self) -> None:
        """Stop the loader's workers now rather than when the interpreter exits."""
        self._iterator = None
        self.loader = None


def eval_batches(dataset: Dataset, ids: torch.Tensor, batch_size: int, settings,
                 collate_fn: Callable | None, device: torch.device):
    """Batches of the samples `ids` (one process's shard of a split), in order, on `device`."""
    chunks = [chunk.tolist() for chunk in ids.split(batch_size)]
    options = loader_options(settings, device)
    options.pop("persistent_workers", None)  # a fresh loader per evaluation
    loader = DataLoader(dataset, batch_sampler=chunks, collate_fn=collate_for(dataset, collate_fn),
                        **options)
    for batch in loader:
        yield to_device(batch, device)


def subset(dataset: Dataset, limit: int, seed: int) -> Dataset:
    """At most `limit` samples, a fixed random choice (the end-of-run training report)."""
    if isinstance(dataset, TensorSplit):
        return dataset.subset(limit, seed)
    if len(dataset) <= limit:
        return dataset
    rows = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:limit]
    return Subset(dataset, rows.sort().values.tolist())


def to_device(batch, device: torch.device):
    """Tensors anywhere in a batch (dicts, lists, tuples) moved to `device`."""
    if device.type == "cpu":
        return batch
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, Sequence) and not isinstance(batch, str):
        return type(batch)(to_device(v, device) for v in batch) if isinstance(batch, list) \
            else tuple(to_device(v, device) for v in batch)
    return batch


def batch_size(batch) -> int | None:
    """Samples in a batch: the length of its first tensor (None when it holds none)."""
    if isinstance(batch, torch.Tensor):
        return len(batch) if batch.ndim else None
    values = batch.values() if isinstance(batch, Mapping) else \
        batch if isinstance(batch, Sequence) and not isinstance(batch, str) else ()
    for value in values:
        found = batch_size(value)
        if found is not None:
            return found
    return None


def _seed(seed: int, rank: int, position: int) -> int:
    digest = hashlib.sha256(f"{seed}/{rank}/{position}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _one_line(error: BaseException) -> str:
    """The last line of an error (a loader worker's error carries the whole traceback)."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    last = lines[-1].strip() if lines else ""
    name = type(error).__name__
    return last if last.startswith(name) else f"{name}: {last}"
