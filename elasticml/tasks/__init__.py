"""Tasks: a bundled one by `task.name`, or the recipe's own components (`tasks/own.py`).

Both give the trainer the same thing (`base.Task`): map-style datasets, a model, a loss and
metrics. A `model: {_target_: ...}` replaces a bundled task's model as well.
"""

from __future__ import annotations

from importlib import import_module

from elasticml.components import Code, is_component
from elasticml.recipe.schema import Recipe

_MODULES = {
    "digits": "elasticml.tasks.digits",
    "recsys": "elasticml.tasks.recsys",
    "movielens": "elasticml.tasks.movielens",
    "sequence": "elasticml.tasks.sequence",
    "custom": "elasticml.tasks.custom",
}


def build_task(recipe: Recipe, code: Code | None = None):
    """The task a recipe names (imports torch and the task's data code on demand). `code`
    says where components may be imported from; default: the recipe's folder."""
    code = code or Code(recipe.run.recipe_dir)
    if recipe.own_data:
        from elasticml.tasks.own import OwnTask

        return OwnTask(recipe, code)
    task = import_module(_MODULES[recipe.task.name]).build(recipe)
    if is_component(recipe.model):
        from elasticml.tasks.own import build_model

        # the bundled task's data, loss and metrics with the recipe's own model
        task.build_model = lambda: build_model(recipe.model, code)
    return task
