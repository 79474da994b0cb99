"""A recipe's own optimizer and schedule (`_target_`), built at the call site with what they
need: the model's parameters, the optimizer. Named ones are built by `train/optim.py`."""

from __future__ import annotations

import functools

from elasticml.components import Code, instantiate, is_component
from elasticml.errors import UserError


def own_optimizer(recipe, parameters):
    """`instantiate(recipe.optimizer, parameters)`; None for a named optimizer."""
    if not is_component(recipe.optimizer):
        return None
    import torch

    made = instantiate(recipe.optimizer, parameters, key="optimizer",
                       code=Code(recipe.run.recipe_dir))
    made = made() if isinstance(made, functools.partial) else made  # `_partial_: true`
    if not isinstance(made, torch.optim.Optimizer):
        raise UserError(f"optimizer: built a {type(made).__name__}, not a torch.optim.Optimizer")
    return made


def own_scheduler(recipe, optimizer):
    """`instantiate(recipe.schedule, optimizer)`, stepped once per optimizer step; None for a
    named schedule."""
    if not is_component(recipe.schedule):
        return None
    made = instantiate(recipe.schedule, optimizer, key="schedule",
                       code=Code(recipe.run.recipe_dir))
    made = made() if isinstance(made, functools.partial) else made
    if not (hasattr(made, "step") and hasattr(made, "state_dict")):
        raise UserError(f"schedule: built a {type(made).__name__}, not a learning-rate "
                        "scheduler (it needs step, state_dict and load_state_dict)")
    return made


def grad_clip(recipe) -> float | None:
    """Gradient-norm clipping of a named optimizer (`optimizer.grad_clip`)."""
    return None if is_component(recipe.optimizer) else recipe.optimizer.grad_clip
