"""Classification over in-memory feature vectors: shared by the digits task and users' own data.

Features are standardised with the training split's mean and deviation. Metrics come from
torchmetrics: loss, accuracy, macro-F1, per-class precision and recall, and the confusion
matrix (a list of lists, so events and reports stay plain JSON).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from elasticml.data.tensors import TensorSplit
from elasticml.tasks.base import Shard
from elasticml.tasks.models import Reshape, cnn, image_shape, mlp

SPLITS = ("train", "val", "test")


def split_indices(n: int, val_fraction: float, test_fraction: float, seed: int):
    """A fixed train/val/test partition of `n` samples, a function of the seed only."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test, n_val = round(n * test_fraction), round(n * val_fraction)
    return order[n_test + n_val:], order[n_test:n_test + n_val], order[:n_test]


def partition(x: torch.Tensor, y: torch.Tensor, val_fraction: float, test_fraction: float,
              seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """One labelled table cut into the three splits by `split_indices`."""
    ids = split_indices(len(x), val_fraction, test_fraction, seed)
    return {name: (x[part], y[part]) for name, part in zip(SPLITS, ids, strict=True)}


class ClassificationTask:
    main_metric = "accuracy"
    higher_is_better = True
    collate_fn = None

    def __init__(self, name: str, data: dict[str, tuple[torch.Tensor, torch.Tensor]],
                 classes: int, recipe) -> None:
        self.name, self.classes, self.recipe = name, classes, recipe
        train_x = data["train"][0].float()
        self.features = train_x[0].numel()
        # A feature constant in training (a digit image's corner pixel) keeps its scale, as
        # scikit-learn's StandardScaler does: dividing by its ~0 deviation would turn a single
        # non-zero pixel of a test image into a value of a million, and its loss with it.
        mean, std = train_x.mean(0), train_x.std(0).nan_to_num(0.0)
        std = torch.where(std < 1e-6, torch.ones_like(std), std)
        self._splits = {
            split: TensorSplit({"x": ((x.float() - mean) / std).contiguous(),
                          "y": y.long().contiguous()})
            for split, (x, y) in data.items()}

    def splits(self) -> dict[str, TensorSplit]:
        return self._splits

    def build_model(self) -> nn.Module:
        config = self.recipe.model
        if config.name == "mlp":
            return mlp(config, self.features, self.classes)
        if config.name == "cnn":
            shape = image_shape(self.features)
            return nn.Sequential(Reshape(*shape), cnn(config, shape, self.classes))
        raise ValueError(f"model.name: '{config.name}' does not fit a classification task "
                         "(use mlp or cnn, or your own model as {_target_: ...})")

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(model(batch["x"]), batch["y"], reduction="none")

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: TensorSplit, device: torch.device,
                 shard: Shard = Shard()) -> dict:
        from torchmetrics import MeanMetric
        from torchmetrics.classification import (
            MulticlassAccuracy,
            MulticlassConfusionMatrix,
            MulticlassF1Score,
            MulticlassPrecision,
            MulticlassRecall,
        )

        from elasticml.tasks.metrics import prepare, results

        k = self.classes
        metrics = prepare({
            "loss": MeanMetric(),
            "accuracy": MulticlassAccuracy(k, average="micro"),
            "macro_f1": MulticlassF1Score(k, average="macro"),
            "precision": MulticlassPrecision(k, average="none"),
            "recall": MulticlassRecall(k, average="none"),
            "confusion_matrix": MulticlassConfusionMatrix(k),
        }, shard, device)
        for batch in split.batches(1024, device, shard.ids(len(split))):
            logits = model(batch["x"]).float()
            for name, metric in metrics.items():
                if name == "loss":
                    metric.update(F.cross_entropy(logits, batch["y"], reduction="none"))
                else:
                    metric.update(logits, batch["y"])
        return results(metrics)
