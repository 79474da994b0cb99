"""Next-token prediction on generated sequences: the workload for throughput benchmarks.

A small transformer has real compute per sample (attention, wide feed-forward layers), so
samples/s and scaling across workers mean something, and the data is generated, so the
benchmark needs no download. The rule (see `SequenceTask`): token t is `perm[token t - lag]`
except for a `noise` share of random tokens. Learning it takes both the permutation (the
embeddings and head) and attention to the right earlier position.

Metrics over the predicted positions t >= lag (the first `lag` tokens are random): mean
cross-entropy `loss`, `perplexity`, next-token `accuracy` (ceiling about `1 - noise`) and
`rule_accuracy`, the accuracy on tokens that followed the rule (ceiling 1).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from elasticml.data.tensors import TensorSplit
from elasticml.tasks.base import Shard
from elasticml.tasks.classification import split_indices
from elasticml.tasks.models import CausalTransformer


def generate(config, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`samples` sequences [N, length] and a mask of the tokens that followed the rule."""
    generator = torch.Generator().manual_seed(seed)
    perm = torch.randperm(config.vocab, generator=generator)
    n, length, lag = config.samples, config.length, config.lag
    tokens = torch.randint(config.vocab, (n, length), generator=generator)
    ruled = torch.rand(n, length, generator=generator) >= config.noise
    ruled[:, :lag] = False
    for t in range(lag, length):
        tokens[:, t] = torch.where(ruled[:, t], perm[tokens[:, t - lag]], tokens[:, t])
    return tokens, ruled


class SequenceTask:
    name = "sequence"
    main_metric = "accuracy"
    higher_is_better = True
    collate_fn = None

    def __init__(self, recipe) -> None:
        self.recipe, self.config = recipe, recipe.task
        tokens, ruled = generate(self.config, recipe.run.seed)
        parts = split_indices(len(tokens), self.config.val_fraction, self.config.test_fraction,
                              recipe.run.seed)
        self._splits = {name: TensorSplit({"tokens": tokens[ids], "ruled": ruled[ids]})
                        for name, ids in zip(("train", "val", "test"), parts, strict=True)}

    def splits(self) -> dict[str, TensorSplit]:
        return self._splits

    def build_model(self) -> nn.Module:
        model = self.recipe.model
        if model.name != "transformer":
            raise ValueError(f"model.name: '{model.name}' does not fit the sequence task "
                             "(use transformer)")
        return CausalTransformer(model, self.config.vocab, self.config.length - 1)

    def _predict(self, model: nn.Module, tokens: torch.Tensor):
        """Logits and targets of the positions t >= lag: [B, T', vocab], [B, T']."""
        logits = model(tokens[:, :-1])[:, self.config.lag - 1:]
        return logits, tokens[:, self.config.lag:]

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits, target = self._predict(model, batch["tokens"])
        losses = F.cross_entropy(logits.transpose(1, 2).float(), target, reduction="none")
        return losses.mean(1)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: TensorSplit, device: torch.device,
                 shard: Shard = Shard()) -> dict:
        from torchmetrics import MeanMetric
        from torchmetrics.classification import MulticlassAccuracy

        from elasticml.tasks.metrics import prepare, results

        vocab = self.config.vocab
        metrics = prepare({"loss": MeanMetric(),
                           "accuracy": MulticlassAccuracy(vocab, average="micro"),
                           "rule_accuracy": MulticlassAccuracy(vocab, average="micro")},
                          shard, device)
        for batch in split.batches(256, device, shard.ids(len(split))):
            logits, target = self._predict(model, batch["tokens"])
            logits = logits.float()
            metrics["loss"].update(F.cross_entropy(logits.transpose(1, 2), target,
                                                   reduction="none"))
            metrics["accuracy"].update(logits.reshape(-1, vocab), target.reshape(-1))
            ruled = batch["ruled"][:, self.config.lag:].reshape(-1)
            metrics["rule_accuracy"].update(logits.reshape(-1, vocab)[ruled],
                                            target.reshape(-1)[ruled])
        out = results(metrics)
        out["perplexity"] = math.exp(min(out["loss"], 50.0))
        return out


def build(recipe) -> SequenceTask:
    return SequenceTask(recipe)
