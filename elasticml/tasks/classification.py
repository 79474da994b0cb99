"""Classification over in-memory features: shared by the digits task and users' own data.

Metrics come from torchmetrics: accuracy, macro-F1, per-class precision and recall, and the
confusion matrix (a list of lists, so events and reports stay plain JSON).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from elasticml.tasks.base import Split
from elasticml.tasks.models import Reshape, cnn, image_shape, mlp


def split_indices(n: int, val_fraction: float, test_fraction: float, seed: int):
    """A fixed train/val/test partition of `n` samples, a function of the seed only."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test, n_val = round(n * test_fraction), round(n * val_fraction)
    return order[n_test + n_val:], order[n_test:n_test + n_val], order[:n_test]


class ClassificationTask:
    main_metric = "accuracy"
    higher_is_better = True

    def __init__(self, name: str, x: torch.Tensor, y: torch.Tensor, classes: int, recipe,
                 val_fraction: float, test_fraction: float) -> None:
        self.name, self.classes, self.recipe = name, classes, recipe
        self.features = x.shape[1]
        train, val, test = split_indices(len(x), val_fraction, test_fraction, recipe.run.seed)
        mean, std = x[train].mean(0), x[train].std(0).clamp_min(1e-6)
        x = (x - mean) / std
        self._splits = {name: Split({"x": x[ids].contiguous(), "y": y[ids].contiguous()})
                        for name, ids in (("train", train), ("val", val), ("test", test))}

    def splits(self) -> dict[str, Split]:
        return self._splits

    def info(self) -> dict:
        return {"task": self.name, "features": self.features, "classes": self.classes}

    def build_model(self) -> nn.Module:
        config = self.recipe.model
        if config.name == "mlp":
            return mlp(config, self.features, self.classes)
        if config.name == "cnn":
            shape = image_shape(self.features)
            return nn.Sequential(Reshape(*shape), cnn(config, shape, self.classes))
        if config.name == "custom":
            from elasticml.tasks.custom import model_from_factory

            return model_from_factory(config, self.info())
        raise ValueError(f"model.name: '{config.name}' does not fit a classification task "
                         "(use mlp, cnn or custom)")

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(model(batch["x"]), batch["y"], reduction="none")

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: Split, device: torch.device) -> dict:
        from torchmetrics.classification import (
            MulticlassAccuracy,
            MulticlassConfusionMatrix,
            MulticlassF1Score,
            MulticlassPrecision,
            MulticlassRecall,
        )

        k = self.classes
        metrics = {
            "accuracy": MulticlassAccuracy(k, average="micro"),
            "macro_f1": MulticlassF1Score(k, average="macro"),
            "precision": MulticlassPrecision(k, average="none"),
            "recall": MulticlassRecall(k, average="none"),
            "confusion_matrix": MulticlassConfusionMatrix(k),
        }
        losses = []
        for batch in split.batches(1024, device):
            logits = model(batch["x"]).float()
            losses.append(F.cross_entropy(logits, batch["y"], reduction="sum"))
            for metric in metrics.values():
                metric.update(logits.cpu(), batch["y"].cpu())
        result = {"loss": float(sum(losses) / max(1, len(split)))}
        for name, metric in metrics.items():
            value = metric.compute()
            result[name] = value.item() if value.ndim == 0 else value.tolist()
        return result
