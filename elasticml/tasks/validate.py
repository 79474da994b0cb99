"""Check a recipe's components before any worker starts: one line naming the key, exit 2.

Every `_target_` must import (from the recipe's folder, `PYTHONPATH` or an installed
package) and take the arguments the recipe gives it (plus those the call site adds: the
parameters for `optimizer`, the optimizer for `schedule`). Where the target is a class, it
must be the right kind: a `Dataset` (not an `IterableDataset`), an `nn.Module`, a torchmetrics
`Metric`, an `Optimizer`, an LR scheduler; a loss must take `(outputs, target)`. A dataset
class with a static `preflight(**arguments)` is asked why it cannot be built (its files are
missing, say) before anything starts. A factory
function's result can only be checked once it is called, in the worker, which ends the job on
the first such error instead of retrying it.

Importing a module runs its top-level code: this happens only for the user's own recipe
(`elasticml train`), never for a checkpoint's.
"""

from __future__ import annotations

import inspect

from elasticml.components import Code, check, is_component, target_of
from elasticml.errors import UserError
from elasticml.recipe.schema import Recipe


def check_components(recipe: Recipe, code: Code | None = None) -> None:
    """Raise a `UserError` for the first component that cannot be built as written."""
    if not _has_components(recipe):
        return
    import torch
    from torch.utils.data import Dataset, IterableDataset

    code = code or Code(recipe.run.recipe_dir)
    if is_component(recipe.model):
        check(recipe.model, "model", code, kind=torch.nn.Module, what="a torch.nn.Module")
    if is_component(recipe.optimizer):
        check(recipe.optimizer, "optimizer", code, runtime_args=1, kind=torch.optim.Optimizer,
              what="a torch.optim.Optimizer")
    if is_component(recipe.schedule):
        check(recipe.schedule, "schedule", code, runtime_args=1,
              kind=torch.optim.lr_scheduler.LRScheduler, what="a learning-rate scheduler")
    data = recipe.data
    for name in ("train", "val", "test"):
        config = getattr(data, name)
        if config is not None:
            check(config, f"data.{name}", code, kind=Dataset, what="a torch.utils.data.Dataset")
            target = code.locate(target_of(config), f"data.{name}._target_")
            if inspect.isclass(target) and issubclass(target, IterableDataset):
                raise UserError(f"data.{name}._target_: {target_of(config)} is an "
                                "IterableDataset; its position cannot survive a resize: give "
                                "a map-style Dataset (__len__ and __getitem__)")
            _preflight(target, config, f"data.{name}")
    for key in ("splits", "collate_fn"):
        if getattr(data, key) is not None:
            check(getattr(data, key), f"data.{key}", code)
    if recipe.loss is not None:
        check(recipe.loss, "loss", code)
        _check_loss_call(recipe.loss, code)
    if recipe.metrics:
        from torchmetrics import Metric

        for name, config in recipe.metrics.items():
            check(config, f"metrics.{name}", code, kind=Metric, what="a torchmetrics Metric")


def check_data_files(recipe: Recipe) -> None:
    """A bundled task's data file read once here, so a bad row (or a missing package) is one
    line before any worker starts rather than an error every restart meets again."""
    task = recipe.task
    if task is None:
        return
    if task.name == "custom":
        from elasticml.recipe.checks import recipe_path
        from elasticml.tasks.custom import read_table

        read_table(recipe_path(recipe, task.path), task.label)
    elif task.name == "movielens" and not task.path:
        from elasticml.data.movielens import bundled_file

        bundled_file()


def _preflight(target, config, key: str) -> None:
    """A dataset class may say, without loading anything, why it cannot be built (missing
    files): `preflight(**arguments) -> str | None`, as `FashionMNIST` does."""
    preflight = getattr(target, "preflight", None)
    if inspect.isclass(target) and callable(preflight):
        problem = preflight(**{k: v for k, v in config.items() if not k.startswith("_")})
        if problem:
            raise UserError(f"{key}: {problem}")


def _has_components(recipe: Recipe) -> bool:
    return recipe.own_data or any(is_component(section) for section in
                                  (recipe.model, recipe.optimizer, recipe.schedule))


def _check_loss_call(config, code: Code) -> None:
    """A loss is called as `loss(outputs, target)`: two positional arguments."""
    target = code.locate(target_of(config), "loss._target_")
    if inspect.isclass(target):
        call = getattr(target, "forward", None) or target.__call__
        bound = [None]  # self
    elif config.get("_partial_"):
        call, bound = target, [None] * len(config.get("_args_") or [])
    else:
        return  # a factory: what it returns is checked when the worker calls it
    try:
        signature = inspect.signature(call)
    except (TypeError, ValueError):
        return
    preset = {k for k in config if not k.startswith("_")} if not inspect.isclass(target) \
        else set()
    try:
        signature.bind(*bound, None, None, **{k: None for k in preset})
    except TypeError as err:
        raise UserError(f"loss: {target_of(config)} cannot be called as loss(outputs, target) "
                        f"({err})") from None
