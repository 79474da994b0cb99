"""Plumbing shared by every task's metrics: torchmetrics objects that combine across processes.

torchmetrics keeps each metric as additive state (counts, sums, gathered lists); with
`sync_on_compute` those states are summed or gathered over the process group before the value
is computed. That is what makes a sharded evaluation exact: the confusion matrix of four
shards is the sum of four matrices, not an average of four accuracies. Sync is switched on
only for a sharded evaluation, so a process that scores a whole split on its own never waits
for peers that are not evaluating.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

from elasticml.tasks.base import Shard


def prepare(metrics: dict[str, Metric], shard: Shard, device: torch.device) -> dict[str, Metric]:
    """Move metric states to `device` (nccl gathers CUDA tensors) and set cross-process sync."""
    for metric in metrics.values():
        metric.sync_on_compute = shard.distributed
    return {name: metric.to(device) for name, metric in metrics.items()}


def results(metrics: dict[str, Metric]) -> dict:
    """Compute every metric in a fixed order (collectives must match across processes) and
    turn tensors into plain floats / lists so events and reports stay JSON."""
    out = {}
    for name, metric in metrics.items():
        value = metric.compute().detach().cpu()
        out[name] = value.item() if value.ndim == 0 else value.tolist()
    return out
