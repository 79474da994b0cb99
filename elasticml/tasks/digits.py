"""Handwritten digits: the 1797 8x8 images that ship inside scikit-learn (no download)."""

from __future__ import annotations

import torch

from elasticml.tasks.classification import ClassificationTask


def build(recipe) -> ClassificationTask:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32)
    y = torch.tensor(digits.target, dtype=torch.long)
    task = recipe.task
    return ClassificationTask("digits", x, y, 10, recipe, task.val_fraction, task.test_fraction)
