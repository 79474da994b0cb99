"""Metric code of the tasks: shards, exact top-k shortcut, classification numbers, rendering."""

import torch
from torchmetrics.retrieval import RetrievalNormalizedDCG, RetrievalRecall

from elasticml.evaluate.output import heatmap, matrices, per_class, scalars
from elasticml.recipe.load import load_recipe
from elasticml.tasks import build_task
from elasticml.tasks.base import Shard
from elasticml.tasks.recsys import _top_k_and_positives


def test_shards_cover_a_split_once():
    for world in (1, 2, 3, 7):
        ids = torch.cat([Shard(rank, world).ids(100) for rank in range(world)])
        assert torch.equal(ids, torch.arange(100))


def test_top_k_shortcut_equals_full_ranking():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(40, 50, generator=generator)
    target = torch.rand(40, 50, generator=generator) < 0.08
    target[:, 0] = True
    hidden = (torch.rand(40, 50, generator=generator) < 0.2) & ~target
    users = torch.arange(40)
    for metric in (RetrievalNormalizedDCG(top_k=5), RetrievalRecall(top_k=5)):
        full = metric.clone()
        keep = ~hidden
        full.update(scores[keep], target[keep], indexes=users[:, None].expand(-1, 50)[keep])
        short = metric.clone()
        short.update(*_top_k_and_positives(scores, target, hidden, users, 5)[:2],
                     indexes=_top_k_and_positives(scores, target, hidden, users, 5)[2])
        assert torch.allclose(full.compute(), short.compute())


def test_classification_metrics_match_a_direct_count():
    recipe = load_recipe({"model": {"name": "mlp", "hidden": [16]}, "trainer": {"max_steps": 1}})
    task = build_task(recipe)
    torch.manual_seed(0)
    model = task.build_model().eval()
    split = task.splits()["val"]
    metrics = task.evaluate(model, split, torch.device("cpu"))
    with torch.no_grad():
        predicted = model(split.tensors["x"]).argmax(1)
    assert abs(metrics["accuracy"] - (predicted == split.tensors["y"]).float().mean()) < 1e-6
    matrix = torch.tensor(metrics["confusion_matrix"])
    assert matrix.sum() == len(split) and len(metrics["recall"]) == 10


def test_recsys_reports_model_and_popularity_baseline():
    recipe = load_recipe("recsys", ["task.users=100", "task.items=60", "task.clusters=4",
                                    "task.interactions_per_user=10", "model.dim=8"])
    task = build_task(recipe)
    metrics = task.evaluate(task.build_model(), task.splits()["test"], torch.device("cpu"))
    assert task.main_metric == "ndcg@10"
    assert set(metrics) == {f"{p}{m}@10" for p in ("", "popular_")
                            for m in ("ndcg", "recall", "hit_rate")}
    assert all(0 <= v <= 1 for v in metrics.values())


def test_eval_output_sorts_values_by_shape():
    metrics = {"accuracy": 0.5, "recall": [0.1, 0.9], "confusion_matrix": [[1, 2], [0, 3]]}
    assert scalars(metrics) == {"accuracy": 0.5}
    assert per_class(metrics) == {"recall": [0.1, 0.9]}
    assert matrices(metrics) == {"confusion_matrix": [[1, 2], [0, 3]]}
    image = heatmap([[1, 2], [0, 3]], cell=4)
    assert image.shape == (8, 8, 3) and image.dtype.name == "uint8"
