"""Scoring one shard of a split with a checkpoint's weights: shared by `eval` and `eval --nproc`.

The task is rebuilt from the checkpoint's recipe with a `Code` policy: without `--trust-code`
only elasticml's own datasets and tasks and torch / torchmetrics classes may be built.
"""

from __future__ import annotations

from pathlib import Path

from elasticml.components import (
    TRUSTED_CLASSES,
    TRUSTED_MODULES,
    Code,
    is_component,
    target_of,
)
from elasticml.errors import UserError
from elasticml.recipe.schema import Recipe

REFUSAL = ("is not elasticml's, torch's or torchmetrics' own class; eval imports the "
           "checkpoint's code only if you pass --trust-code")


def code_for(recipe: Recipe, trust_code: bool) -> Code:
    """Where eval may import a checkpoint's components from."""
    if not trust_code:
        return Code(None, trusted_only=True, refusal=REFUSAL)
    folder = recipe.run.recipe_dir
    return Code(folder if folder and Path(folder).is_dir() else None)


def components_of(recipe: Recipe) -> list[tuple[str, str]]:
    """(recipe key, dotted target) of every component in the recipe, nested ones included."""
    found: list[tuple[str, str]] = []

    def walk(node, key: str) -> None:
        if is_component(node):
            found.append((f"{key}._target_", target_of(node)))
        if isinstance(node, dict):
            for name, value in node.items():
                walk(value, f"{key}.{name}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{key}[{index}]")

    for section in ("model", "loss", "optimizer", "schedule"):
        walk(getattr(recipe, section), section)
    data = recipe.data
    for name in ("train", "val", "test", "splits", "collate_fn"):
        walk(getattr(data, name), f"data.{name}")
    for name, metric in recipe.metrics.items():
        walk(metric, f"metrics.{name}")
    return found


def foreign(dotted: str) -> bool:
    """Code outside elasticml's datasets and tasks, torch and torchmetrics."""
    return not (any(dotted.startswith(prefix + ".") for prefix in TRUSTED_MODULES)
                or dotted.split(".")[0] in TRUSTED_CLASSES)


def score_shard(state: dict, recipe: Recipe, split: str, rank: int = 0, world: int = 1,
                device=None, trust_code: bool = False) -> dict:
    """Rebuild task and model, load the weights, and score this process's shard of `split`."""
    import torch

    from elasticml.tasks import build_task
    from elasticml.tasks.base import Shard

    device = device or eval_device(recipe)
    task = build_task(recipe, code_for(recipe, trust_code))
    torch.manual_seed(recipe.run.seed)
    model = task.build_model()
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        first = str(err).strip().splitlines()[-1].strip()
        raise UserError(f"the checkpoint's weights do not fit the model this recipe builds "
                        f"(did an override change the data's shape?): {first}") from None
    model.to(device).eval()
    with torch.no_grad():
        return task.evaluate(model, task.splits()[split], device, Shard(rank, world))


def eval_device(recipe: Recipe, index: int = 0):
    """CUDA when the recipe allows it and one is visible, else CPU: a checkpoint trained on
    GPUs scores on a laptop, and `trainer.device=cuda` insists on a GPU."""
    import torch

    choice = recipe.trainer.device
    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError("trainer.device=cuda but no CUDA device is visible")
    if choice != "cpu" and torch.cuda.is_available():
        return torch.device("cuda", index % torch.cuda.device_count())
    return torch.device("cpu")
