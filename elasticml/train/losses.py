"""The loss contract: how what a loss returns becomes the sum the fixed-global-batch step needs.

A step computes `sum of per-sample losses / global batch` at every world size (each rank
back-propagates its share's sum times `world / global batch`; DDP averages over ranks). So the
loop needs the *sum* of the losses of each micro-batch:

* per-sample losses, shape [n] (`reduction="none"`): summed as they are. Exact.
* one number (a mean-reduced loss, as `torch.nn.CrossEntropyLoss()` is written in most
  scripts, or a model's own `outputs.loss`): taken as the mean over the n samples and
  multiplied by n. Exact when the loss is a plain mean over samples; a weighted mean (class
  weights, `ignore_index`, a mean over tokens of unequal count) weighs micro-batches slightly
  differently, so steps differ a little between world sizes.
* per-sample values with more dimensions ([n, tokens]): averaged per sample, then summed.
"""

from __future__ import annotations

import torch

from elasticml.errors import UserError


def loss_sum(losses: torch.Tensor, samples: int) -> torch.Tensor:
    """The sum over a micro-batch of `samples` samples of what the loss returned."""
    if not isinstance(losses, torch.Tensor) or not losses.is_floating_point():
        raise UserError(f"loss: returned {type(losses).__name__}, not a floating-point tensor")
    losses = losses.float()
    if losses.ndim == 0:
        return losses * samples
    if losses.shape[0] != samples:
        raise UserError(f"loss: returned shape {tuple(losses.shape)} for a batch of {samples} "
                        "samples; return one number (a mean) or one value per sample")
    return losses.reshape(samples, -1).mean(1).sum()
