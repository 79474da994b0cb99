"""Recommendation on MovieLens-100k: real ratings as implicit feedback, the recsys task's model
and evaluation (`tasks/recsys.py`).

Every rating (at least `task.min_rating`) is an interaction. Leave-last-out split by time,
the usual protocol for next-item recommendation: per user, the newest item is the test item,
the one before it the validation item, the rest are training interactions (ties broken by
item id, so the split is a function of the file alone). Users with fewer than three
interactions are left out. Evaluation ranks the whole catalogue and compares the model with
the most-popular list of the training interactions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from elasticml.data.movielens import bundled_file, read_ratings
from elasticml.errors import UserError
from elasticml.recipe.checks import recipe_path
from elasticml.tasks.recsys import RecsysTask
from elasticml.tasks.recsys_data import Interactions


def leave_last_out(users: np.ndarray, items: np.ndarray, times: np.ndarray) -> Interactions:
    """Newest item per user -> test, the one before -> validation, the rest -> training."""
    order = np.lexsort((items, times, users))
    users, items = users[order], items[order]
    counts = np.bincount(users)
    keep_users = np.flatnonzero(counts >= 3)
    if len(keep_users) == 0:
        raise UserError("task: no user has three interactions (training, validation, test)")
    remap = np.full(len(counts), -1)
    remap[keep_users] = np.arange(len(keep_users))
    kept = remap[users] >= 0
    users, items = remap[users[kept]], items[kept]
    ends = np.cumsum(np.bincount(users))
    test_rows, val_rows = ends - 1, ends - 2
    train = np.ones(len(users), dtype=bool)
    train[test_rows] = train[val_rows] = False
    n_items = int(items.max()) + 1
    owned = torch.zeros(len(keep_users), n_items, dtype=torch.bool)
    owned[torch.from_numpy(users), torch.from_numpy(items)] = True
    return Interactions(
        train_users=torch.from_numpy(users[train]).long(),
        train_items=torch.from_numpy(items[train]).long(),
        val_items=torch.from_numpy(items[val_rows]).long(),
        test_items=torch.from_numpy(items[test_rows]).long(),
        owned=owned,
    )


def build(recipe) -> RecsysTask:
    config = recipe.task
    path = recipe_path(recipe, config.path) if config.path else bundled_file()
    ratings = read_ratings(Path(path))
    keep = ratings.ratings >= config.min_rating
    data = leave_last_out(ratings.users[keep], ratings.items[keep], ratings.times[keep])
    return RecsysTask(recipe, data)
