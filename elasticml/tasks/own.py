"""A recipe's own datasets, model, loss and metrics, built from `_target_` components.

Batches are what the DataLoader makes of the datasets' samples:
* `(input, target)` pairs (as torchvision datasets return them), or longer tuples: the model
  is called as `model(*batch[:-1])` and the loss as `loss(outputs, batch[-1])`;
* dicts: `data.target_key` names the target, the other entries are the model's keyword
  arguments; with no `loss` the whole dict goes to the model (Hugging Face style, labels
  included) and its output's `loss` is used.

Metrics are torchmetrics objects, updated with `(outputs, target)` (a model output's `logits`
when it has them), plus `loss`, the mean loss of the split. The best checkpoint is picked by
`trainer.best_metric`, else the first metric, in the direction the metric's own
`higher_is_better` gives.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.utils.data import Dataset, IterableDataset

from elasticml.components import Code, instantiate
from elasticml.data.loader import batch_size, eval_batches
from elasticml.errors import UserError
from elasticml.tasks.base import Shard

SPLITS = ("train", "val", "test")


class OwnTask:
    name = "own"

    def __init__(self, recipe, code: Code) -> None:
        self.recipe, self.code, self.data = recipe, code, recipe.data
        self._splits = self._datasets()
        self.collate_fn = self._build("data.collate_fn", self.data.collate_fn)
        self.loss_fn = self._build("loss", recipe.loss)
        if self.loss_fn is not None and not callable(self.loss_fn):
            raise UserError(f"loss: {type(self.loss_fn).__name__} is not callable")
        self.main_metric = recipe.trainer.best_metric or next(iter(recipe.metrics), "loss")
        self.higher_is_better = False
        if self.main_metric != "loss":
            metric = self._metric(self.main_metric)
            self.higher_is_better = getattr(metric, "higher_is_better", None) is not False

    def splits(self) -> dict[str, Dataset]:
        return self._splits

    def build_model(self) -> nn.Module:
        return build_model(self.recipe.model, self.code)

    # --- training ----------------------------------------------------------------------

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        outputs, target = self.forward(model, batch)
        if self.loss_fn is None:
            return own_loss(outputs)
        return self.loss_fn(outputs, target)

    def forward(self, model: nn.Module, batch):
        """(outputs, target) of one batch, by the batch conventions above."""
        key = self.data.target_key
        if isinstance(batch, Mapping):
            if self.loss_fn is None:
                return model(**batch), batch.get(key)
            if key not in batch:
                raise UserError(f"data.target_key: the batches have no '{key}' entry (they "
                                f"have {', '.join(map(str, batch))})")
            return model(**{k: v for k, v in batch.items() if k != key}), batch[key]
        if isinstance(batch, list | tuple):
            if len(batch) < 2:
                return model(*batch), None
            return model(*batch[:-1]), batch[-1]
        return model(batch), None

    # --- evaluation --------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: Dataset, device: torch.device,
                 shard: Shard = Shard()) -> dict:
        from torchmetrics import MeanMetric

        from elasticml.tasks.metrics import prepare, results

        metrics = prepare({"loss": MeanMetric(),
                           **{name: self._metric(name) for name in self.recipe.metrics}},
                          shard, device)
        loader = self.data.loader
        for batch in eval_batches(split, shard.ids(len(split)), loader.eval_batch_size, loader,
                                  self.collate_fn, device):
            outputs, target = self.forward(model, batch)
            samples = batch_size(batch) or 1
            losses = own_loss(outputs) if self.loss_fn is None else self.loss_fn(outputs, target)
            losses = losses.detach().float()
            if losses.ndim == 0:
                metrics["loss"].update(losses, weight=samples)
            else:
                metrics["loss"].update(losses.reshape(samples, -1).mean(1))
            predictions = logits_of(outputs)
            for name, metric in metrics.items():
                if name != "loss":
                    _update(name, metric, predictions, target)
        return results(metrics)

    # --- building ----------------------------------------------------------------------

    def _datasets(self) -> dict[str, Dataset]:
        if self.data.splits is not None:
            made = instantiate(self.data.splits, key="data.splits", code=self.code)
            if isinstance(made, Mapping) and set(SPLITS) <= set(made):
                found = {name: made[name] for name in SPLITS}
            elif isinstance(made, list | tuple) and len(made) == 3:
                found = dict(zip(SPLITS, made, strict=True))
            else:
                raise UserError("data.splits: must return a dict with train, val and test, or "
                                f"a 3-tuple of datasets; got {type(made).__name__}")
            keys = {name: "data.splits" for name in SPLITS}
        else:
            found = {name: instantiate(getattr(self.data, name), key=f"data.{name}",
                                       code=self.code) for name in SPLITS}
            keys = {name: f"data.{name}" for name in SPLITS}
        for name, dataset in found.items():
            check_dataset(dataset, keys[name] if keys[name] != "data.splits" else
                          f"data.splits ({name})")
        return found

    def _build(self, key: str, config):
        return None if config is None else instantiate(config, key=key, code=self.code)

    def _metric(self, name: str):
        metric = instantiate(self.recipe.metrics[name], key=f"metrics.{name}", code=self.code)
        from torchmetrics import Metric

        if not isinstance(metric, Metric):
            raise UserError(f"metrics.{name}: {type(metric).__name__} is not a torchmetrics "
                            "Metric")
        return metric


def build_model(config, code: Code) -> nn.Module:
    model = instantiate(config, key="model", code=code)
    if not isinstance(model, nn.Module):
        raise UserError(f"model: {type(model).__name__} is not a torch.nn.Module")
    return model


def check_dataset(dataset, key: str) -> None:
    if isinstance(dataset, IterableDataset):
        raise UserError(f"{key}: an IterableDataset has no random access, so its position "
                        "cannot survive a resize; give a map-style Dataset (__len__ and "
                        "__getitem__)")
    if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
        raise UserError(f"{key}: {type(dataset).__name__} is not a map-style Dataset (needs "
                        "__len__ and __getitem__)")
    if len(dataset) == 0:
        raise UserError(f"{key}: the dataset is empty")


def own_loss(outputs) -> torch.Tensor:
    """The loss a model computed itself: `outputs.loss` or `outputs["loss"]`."""
    found = outputs.get("loss") if isinstance(outputs, Mapping) else \
        getattr(outputs, "loss", None)
    if found is None:
        raise UserError("loss: the recipe names no loss and the model's output has no `loss`; "
                        "add loss: {_target_: torch.nn.CrossEntropyLoss} (or your own)")
    return found


def logits_of(outputs):
    """What metrics are updated with: `outputs.logits` (Hugging Face), else the outputs."""
    if isinstance(outputs, Mapping) and "logits" in outputs:
        return outputs["logits"]
    logits = getattr(outputs, "logits", None)
    return outputs if logits is None else logits


def _update(name: str, metric, predictions, target) -> None:
    try:
        metric.update(predictions, target)
    except Exception as err:  # noqa: BLE001 - a metric that does not fit the outputs
        message = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise UserError(f"metrics.{name}: update(outputs, target) failed: "
                        f"{type(err).__name__}: {message}") from None
