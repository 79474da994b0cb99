"""Recommendation from implicit feedback: matrix factorisation trained with sampled negatives.

Data: `recsys_data.generate` (planted taste groups + popularity, leave-out split per user) or
real ratings (`tasks/movielens.py`), both as `Interactions`.
Training samples are (user, item) interactions; the loss scores the item against its fixed
sampled negatives, either as a sampled softmax (cross-entropy with the positive first) or as
BPR (mean `-log sigmoid(positive - negative)`).

Evaluation ranks the whole catalogue for each user of the split, leaving out the items the user
has in the *other* splits (standard leave-out protocol), and scores recall@k, NDCG@k and hit
rate@k with `torchmetrics.retrieval`, for the model and for a most-popular list (item counts in
the training split), reported as `popular_<metric>`. Users are sharded across processes.

Only each user's top k candidates plus the split's positives are handed to torchmetrics: every
@k metric of that shorter list equals the metric of the full ranking (the positives outside the
top k rank after it either way), and it keeps the gathered state small.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from elasticml.data.tensors import TensorSplit
from elasticml.tasks.base import Shard
from elasticml.tasks.models import MatrixFactorization
from elasticml.tasks.recsys_data import Interactions, generate, sample_negatives

USERS_PER_BATCH = 512


class RecsysTask:
    higher_is_better = True
    collate_fn = None

    def __init__(self, recipe, data: Interactions) -> None:
        self.recipe, self.config = recipe, recipe.task
        self.name = recipe.task.name
        self.main_metric = f"ndcg@{self.config.top_k}"
        self.owned = data.owned
        self.users, self.items = data.owned.shape
        users = torch.arange(self.users)
        self._splits = {
            "train": TensorSplit({"user": data.train_users, "item": data.train_items,
                                  "negatives": sample_negatives(data, self.config.negatives,
                                                                recipe.run.seed)}),
            "val": TensorSplit({"user": users, "item": data.val_items}),
            "test": TensorSplit({"user": users, "item": data.test_items}),
        }
        self.popularity = torch.bincount(data.train_items, minlength=self.items).float()

    def splits(self) -> dict[str, TensorSplit]:
        return self._splits

    def build_model(self) -> nn.Module:
        model = self.recipe.model
        if model.name != "mf":
            raise ValueError(f"model.name: '{model.name}' does not fit the {self.name} task "
                             "(use mf)")
        return MatrixFactorization(self.users, self.items, model.dim)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        candidates = torch.cat([batch["item"][:, None], batch["negatives"]], dim=1)
        scores = model(batch["user"], candidates).float()
        if self.config.loss == "bpr":
            return -F.logsigmoid(scores[:, :1] - scores[:, 1:]).mean(1)
        return F.cross_entropy(scores, torch.zeros(len(scores), dtype=torch.long,
                                                   device=scores.device), reduction="none")

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: TensorSplit, device: torch.device,
                 shard: Shard = Shard()) -> dict:
        from elasticml.tasks.metrics import prepare, results

        k = self.config.top_k
        metrics = prepare(_retrieval_metrics(k, ""), shard, device) | \
            prepare(_retrieval_metrics(k, "popular_"), shard, device)
        positives = torch.zeros_like(self.owned)
        positives[split.tensors["user"], split.tensors["item"]] = True
        users = split.tensors["user"].unique()
        popular = self.popularity.to(device)
        for chunk in shard.ids(len(users)).split(USERS_PER_BATCH):
            ids = users[chunk]
            hidden = (self.owned[ids] & ~positives[ids]).to(device)
            target = positives[ids].to(device)
            ranked = {"": model.score_all(ids.to(device)).float(),
                      "popular_": popular.expand(len(ids), -1)}
            for prefix, scores in ranked.items():
                preds, wanted, groups = _top_k_and_positives(scores, target, hidden, ids, k)
                for name in _names(k):
                    metrics[prefix + name].update(preds, wanted, indexes=groups)
        return results(metrics)


def _names(k: int) -> tuple[str, ...]:
    return f"ndcg@{k}", f"recall@{k}", f"hit_rate@{k}"


def _retrieval_metrics(k: int, prefix: str) -> dict:
    from torchmetrics.retrieval import RetrievalHitRate, RetrievalNormalizedDCG, RetrievalRecall

    ndcg, recall, hit_rate = _names(k)
    return {prefix + ndcg: RetrievalNormalizedDCG(top_k=k),
            prefix + recall: RetrievalRecall(top_k=k),
            prefix + hit_rate: RetrievalHitRate(top_k=k)}


def _top_k_and_positives(scores: torch.Tensor, target: torch.Tensor, hidden: torch.Tensor,
                         users: torch.Tensor, k: int):
    """Flattened (scores, relevance, user) of each user's top-k candidates and positives."""
    scores = scores.masked_fill(hidden, float("-inf"))
    keep = torch.zeros_like(target)
    keep.scatter_(1, scores.topk(k, dim=1).indices, True)
    keep = (keep | target) & ~hidden
    groups = users.to(scores.device)[:, None].expand_as(scores)
    return scores[keep], target[keep], groups[keep]


def build(recipe) -> RecsysTask:
    return RecsysTask(recipe, generate(recipe.task, recipe.run.seed))
