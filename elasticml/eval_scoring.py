"""Scoring one shard of a split with a checkpoint's weights: shared by `eval` and `eval --nproc`."""

from __future__ import annotations

from elasticml.errors import UserError
from elasticml.recipe.schema import Recipe


def score_shard(state: dict, recipe: Recipe, split: str, rank: int = 0, world: int = 1,
                device=None) -> dict:
    """Rebuild task and model, load the weights, and score this process's shard of `split`."""
    import torch

    from elasticml.tasks import build_task
    from elasticml.tasks.base import Shard

    device = device or eval_device(recipe)
    task = build_task(recipe)
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
