"""Handwritten digits: the 1797 8x8 images that ship inside scikit-learn (no download)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from elasticml.tasks.classification import ClassificationTask, partition


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The digits as (features, labels), read straight from scikit-learn's bundled file.

    Importing `sklearn.datasets` costs ~1.5 s per worker; the file itself loads in ~30 ms.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / "datasets/data/digits.csv.gz"
        if path.is_file():
            data = np.loadtxt(path, delimiter=",", dtype=np.float32)
            return data[:, :-1], data[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.data.astype(np.float32), digits.target.astype(np.int64)


def build(recipe) -> ClassificationTask:
    features, labels = load_digits_arrays()
    task = recipe.task
    data = partition(torch.from_numpy(features), torch.from_numpy(labels), task.val_fraction,
                     task.test_fraction, recipe.run.seed)
    return ClassificationTask("digits", data, 10, recipe)
