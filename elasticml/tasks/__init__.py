"""Tasks by name. Each module builds its data and model from the recipe; see `base.Task`."""

from __future__ import annotations

from importlib import import_module

from elasticml.recipe.schema import Recipe

_MODULES = {
    "digits": "elasticml.tasks.digits",
    "recsys": "elasticml.tasks.recsys",
    "sequence": "elasticml.tasks.sequence",
    "custom": "elasticml.tasks.custom",
}


def build_task(recipe: Recipe):
    """The task a recipe names (imports torch and the task's data code on demand)."""
    module = import_module(_MODULES[recipe.task.name])
    return module.build(recipe)
