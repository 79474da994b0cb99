"""Optimizer and learning-rate schedule from the recipe.

The learning rate is set before every step from where training stands (`Horizon.position`)
and the batch plan's scale, rather than carried in a torch LR scheduler: a scheduler's state
and the optimizer's restored `lr` belong to the world size they were saved at, so the first
step after a resize would use the old scale.
"""

from __future__ import annotations

import math

import torch

from elasticml.recipe.schema import OptimizerConfig, ScheduleConfig


def build_optimizer(config: OptimizerConfig, params) -> torch.optim.Optimizer:
    if config.name == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    kind = torch.optim.AdamW if config.name == "adamw" else torch.optim.Adam
    return kind(params, lr=config.lr, betas=tuple(config.betas), weight_decay=config.weight_decay)


def lr_factor(config: ScheduleConfig, step: int, total_steps: int) -> float:
    """Multiplier of the base learning rate at `step` (warmup, then the schedule)."""
    if config.warmup_steps and step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.name == "constant":
        return 1.0
    span = max(1, total_steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    floor = config.min_lr_ratio
    if config.name == "linear":
        return floor + (1 - floor) * (1 - progress)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


class LearningRate:
    """`lr = optimizer.lr x scale x lr_factor(position)`, applied to every parameter group.

    `scale` is the linear batch policy's factor for the world size of this attempt. The base
    learning rate is kept in each group's `initial_lr` (as torch's schedulers do), so it
    survives the optimizer's state dict."""

    def __init__(self, config: ScheduleConfig, optimizer: torch.optim.Optimizer, horizon,
                 scale: float = 1.0) -> None:
        self.config, self.optimizer, self.horizon, self.scale = config, optimizer, horizon, scale
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])

    def apply(self, step: int, samples_seen: int) -> float:
        """Set the learning rate of the step about to run; returns the first group's."""
        factor = self.scale * lr_factor(self.config, self.horizon.position(step, samples_seen),
                                        self.horizon.schedule_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        return self.optimizer.param_groups[0]["lr"]
