"""Optimizer and learning-rate schedule from the recipe."""

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


def build_scheduler(config: ScheduleConfig, optimizer, total_steps: int, scale: float = 1.0):
    """A LambdaLR whose position is the optimizer step; `scale` is the linear-policy factor."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: scale * lr_factor(config, step, total_steps)
    )
