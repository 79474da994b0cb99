"""A recipe's own datasets, model, loss and metrics: recipe shape, checks before launch, the
batch and loss contracts, the loader's data errors, and the real-data readers."""

import gzip
import struct

import numpy as np
import pytest
import torch

from elasticml.data.loader import TrainBatches
from elasticml.data.sampler import ElasticSampler
from elasticml.errors import UserError
from elasticml.recipe.load import load_recipe
from elasticml.tasks import build_task
from elasticml.tasks.validate import check_components
from elasticml.train.batching import plan_batches
from elasticml.train.losses import loss_sum

MODULE = '''
import torch
from torch.utils.data import Dataset, IterableDataset

class Pairs(Dataset):
    def __init__(self, n=40, bad=None, as_dict=False):
        g = torch.Generator().manual_seed(n)
        self.x, self.bad, self.as_dict = torch.randn(n, 3, generator=g), bad, as_dict
        self.y = (self.x[:, 0] > 0).long()
    def __len__(self):
        return len(self.y)
    def __getitem__(self, i):
        if i == self.bad:
            raise ValueError(f"row {i} is not a number")
        if self.as_dict:
            return {"features": self.x[i], "target": self.y[i]}
        return self.x[i], self.y[i]

class Stream(IterableDataset):
    def __iter__(self):
        yield 1

class Net(torch.nn.Module):
    def __init__(self, width=8):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(3, width), torch.nn.ReLU(),
                                        torch.nn.Linear(width, 2))
    def forward(self, features):
        return self.body(features)

class Output(dict):
    pass

class OwnLossNet(Net):
    def forward(self, features, target):
        logits = self.body(features)
        return {"loss": torch.nn.functional.cross_entropy(logits, target), "logits": logits}

class Scale:
    def __init__(self, factor):
        self.factor = factor
    def __call__(self, x):
        return x * self.factor

class Transformed(Pairs):
    def __init__(self, transform, n=40):
        super().__init__(n)
        self.transform = transform
    def __getitem__(self, i):
        x, y = super().__getitem__(i)
        return self.transform(x), y

def pairs_collate(samples, scale=1.0):
    xs, ys = zip(*samples)
    return torch.stack(xs) * scale, torch.stack(ys)

class OneArgLoss(torch.nn.Module):
    def forward(self, outputs):
        return outputs.sum()
'''


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "mine.py").write_text(MODULE)
    return tmp_path


def recipe(folder, **sections):
    base = {"run": {"dir": str(folder / "runs"), "recipe_dir": str(folder)},
            "data": {name: {"_target_": "mine.Pairs"} for name in ("train", "val", "test")},
            "model": {"_target_": "mine.Net"},
            "loss": {"_target_": "torch.nn.CrossEntropyLoss"},
            "metrics": {"accuracy": {"_target_": "torchmetrics.classification.MulticlassAccuracy",
                                     "num_classes": 2}},
            "trainer": {"max_steps": 2}}
    for key, value in sections.items():
        if value is None:
            base.pop(key)
        elif key == "data":
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return load_recipe(base)


@pytest.mark.parametrize(("sections", "message"), [
    ({"task": {"name": "digits"}}, r"^task: a recipe names its data either with task"),
    ({"model": {"name": "mlp"}}, r"^model: with your own data, name your model as"),
    ({"data": {"val": None}}, r"^data.val: your own data needs train, val and test"),
    ({"data": {"splits": {"_target_": "mine.make"}}}, r"^data.splits: name the datasets either"),
    ({"trainer": {"max_steps": 2, "best_metric": "f1"}},
     r"^trainer.best_metric: 'f1' is not loss or one of metrics \(accuracy\)"),
    ({"trainer": {"max_steps": 2, "early_stopping": {"patience": 2, "metric": "f1"}}},
     r"^trainer.early_stopping.metric: 'f1' is not loss or one of metrics \(accuracy\)"),
    ({"schedule": {"_target_": "torch.optim.lr_scheduler.StepLR", "step_size": 1},
      "trainer": {"max_steps": 2, "batch_policy": "linear"}}, r"^trainer.batch_policy: linear"),
])
def test_recipe_shape_errors(folder, sections, message):
    with pytest.raises(UserError, match=message):
        recipe(folder, **sections)


def test_bundled_tasks_keep_their_own_loss():
    with pytest.raises(UserError, match=r"^loss: the bundled task 'digits' has its own loss"):
        load_recipe({"loss": {"_target_": "torch.nn.MSELoss"}, "trainer": {"max_steps": 1}})


@pytest.mark.parametrize(("sections", "message"), [
    ({"data": {"train": {"_target_": "mine.Net"}}},
     r"^data.train._target_: mine.Net is not a torch.utils.data.Dataset"),
    ({"data": {"train": {"_target_": "mine.Stream"}}}, r"^data.train._target_: mine.Stream is an "
                                                       r"IterableDataset"),
    ({"model": {"_target_": "mine.Pairs"}}, r"^model._target_: mine.Pairs is not a torch.nn"),
    ({"model": {"_target_": "mine.Net", "widht": 3}}, r"^model: Net takes no argument 'widht'"),
    ({"loss": {"_target_": "mine.OneArgLoss"}}, r"^loss: mine.OneArgLoss cannot be called as "
                                                r"loss\(outputs, target\)"),
    ({"metrics": {"accuracy": {"_target_": "torch.nn.MSELoss"}}},
     r"^metrics.accuracy._target_: torch.nn.MSELoss is not a torchmetrics Metric"),
    ({"data": {"test": {"_target_": "nowhere_mod.Pairs"}}},
     r"^data.test._target_: cannot import nowhere_mod.Pairs"),
    ({"data": {"val": {"_target_": "elasticml.data.fashion_mnist.FashionMNIST",
                       "root": "/nonexistent"}}},
     r"^data.val: Fashion-MNIST not found in /nonexistent .*apt-get install "
     r"dataset-fashion-mnist"),
])
def test_component_errors_before_any_worker_starts(folder, sections, message):
    with pytest.raises(UserError, match=message) as caught:
        check_components(recipe(folder, **sections))
    assert "\n" not in str(caught.value)


def test_tuple_batches_loss_and_metrics(folder):
    check_components(recipe(folder))
    task = build_task(recipe(folder))
    model = task.build_model()
    batch = next(iter(torch.utils.data.DataLoader(task.splits()["train"], batch_size=5)))
    loss = task.loss(model, batch)
    assert loss.ndim == 0  # CrossEntropyLoss() as users write it: the batch mean
    metrics = task.evaluate(model, task.splits()["val"], torch.device("cpu"))
    assert set(metrics) == {"loss", "accuracy"} and 0 <= metrics["accuracy"] <= 1
    assert task.main_metric == "accuracy" and task.higher_is_better
    assert build_task(recipe(folder, metrics={})).main_metric == "loss"
    assert not build_task(recipe(folder, metrics={})).higher_is_better


def test_dict_batches_and_a_model_that_returns_its_own_loss(folder):
    dicts = {name: {"_target_": "mine.Pairs", "as_dict": True} for name in ("train", "val",
                                                                            "test")}
    task = build_task(recipe(folder, data=dicts))
    batch = next(iter(torch.utils.data.DataLoader(task.splits()["train"], batch_size=4)))
    assert task.loss(task.build_model(), batch).ndim == 0
    own = build_task(recipe(folder, data=dicts, loss=None, model={"_target_": "mine.OwnLossNet"}))
    model = own.build_model()
    assert own.loss(model, batch).ndim == 0
    metrics = own.evaluate(model, own.splits()["test"], torch.device("cpu"))
    assert {"loss", "accuracy"} == set(metrics)
    plain = build_task(recipe(folder, data=dicts, loss=None))
    with pytest.raises(UserError, match="^loss: the recipe names no loss"):
        plain.loss(plain.build_model(), {"features": batch["features"]})


def test_a_nested_transform_and_a_partial_collate_function(folder):
    transformed = {"_target_": "mine.Transformed",
                   "transform": {"_target_": "mine.Scale", "factor": 0.0}}
    task = build_task(recipe(folder, data={"train": transformed, "collate_fn": {
        "_target_": "mine.pairs_collate", "_partial_": True, "scale": 2.0}}))
    loaded = recipe(folder, data={"loader": {"num_workers": 1}},
                    trainer={"max_steps": 2, "global_batch_size": 32})
    plan = plan_batches(loaded.trainer, 1, 1)
    batches = TrainBatches(task.splits()["train"], ElasticSampler(40, 0), plan, 1, 0,
                           loaded.data.loader, task.collate_fn, torch.device("cpu"))
    features, labels = batches.next(torch.arange(32))
    assert features.shape == (32, 3) and (features == 0).all() and labels.shape == (32,)
    batches.close()


def test_the_loss_contract():
    per_sample = torch.tensor([1.0, 2.0, 3.0])
    assert loss_sum(per_sample, 3).item() == 6.0
    assert loss_sum(per_sample.mean(), 3).item() == pytest.approx(6.0)
    assert loss_sum(torch.ones(3, 5), 3).item() == 3.0  # per-token values: mean per sample
    with pytest.raises(UserError, match=r"loss: returned shape \(2,\) for a batch of 3"):
        loss_sum(torch.ones(2), 3)
    with pytest.raises(UserError, match="not a floating-point tensor"):
        loss_sum(torch.ones(3, dtype=torch.long), 3)


@pytest.mark.parametrize("workers", [0, 1])
def test_a_bad_sample_is_an_input_error_with_loader_workers_too(folder, workers):
    task = build_task(recipe(folder, data={"train": {"_target_": "mine.Pairs", "bad": 7}},
                             trainer={"max_steps": 2, "global_batch_size": 40}))
    loaded = recipe(folder, data={"loader": {"num_workers": workers}})
    plan = plan_batches(loaded.trainer, 1, 1)
    batches = TrainBatches(task.splits()["train"], ElasticSampler(40, 0), plan, 1, 0,
                           loaded.data.loader, None, torch.device("cpu"))
    with pytest.raises(UserError, match=r"^data: a training batch could not be read: "
                                        r"ValueError: row 7 is not a number$"):
        batches.next(torch.arange(40))
    batches.close()


def test_idx_files_and_fashion_mnist_preflight(tmp_path):
    from elasticml.data.fashion_mnist import FashionMNIST, read_idx

    images = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    blob = b"\0\0\x08\x03" + struct.pack(">3i", 2, 3, 3) + images.tobytes()
    (tmp_path / "x.gz").write_bytes(gzip.compress(blob))
    assert (read_idx(tmp_path / "x.gz") == images).all()
    (tmp_path / "short").write_bytes(blob[:-1])
    with pytest.raises(UserError, match="truncated"):
        read_idx(tmp_path / "short")
    assert "apt-get install dataset-fashion-mnist" in FashionMNIST.preflight(root=str(tmp_path))
    with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist"):
        FashionMNIST(root=str(tmp_path))


def test_movielens_leave_last_out_and_a_missing_recbole(monkeypatch):
    from elasticml.data import movielens
    from elasticml.tasks.movielens import leave_last_out

    users = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2])
    items = np.array([5, 1, 2, 3, 4, 0, 1, 2, 3])
    times = np.array([4, 1, 2, 3, 1, 2, 9, 8, 7])
    data = leave_last_out(users, items, times)
    assert data.test_items.tolist() == [5, 1] and data.val_items.tolist() == [3, 2]
    assert data.train_users.tolist() == [0, 0, 1] and data.train_items.tolist() == [1, 2, 3]
    assert data.owned.shape == (2, 6)  # user 1 had only two ratings: left out
    monkeypatch.setattr(movielens.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"pip install --no-deps recbole"):
        movielens.bundled_file()


_A_TRAINER = """
import signal, sys, time
from types import SimpleNamespace
import torch
from torch.utils.data import DataLoader, TensorDataset
from elasticml.data.loader import loader_options

stopped = []
signal.signal(signal.SIGTERM, lambda *_: stopped.append(1))  # it stops at a step boundary
settings = SimpleNamespace(num_workers=2, pin_memory=False, persistent_workers=False,
                           prefetch_factor=None)
loader = DataLoader(TensorDataset(torch.arange(64.0)), batch_size=4,
                    **loader_options(settings, torch.device("cpu")))
batches = iter(loader)
next(batches), next(batches)  # one batch from each worker: both have started
print("ready", flush=True)
sys.stdin.readline()  # the test has signalled this process group
time.sleep(0.5)
print(len(list(batches)), len(stopped), flush=True)
kept = iter(loader)
next(kept)  # and it exits with a live iterator, as a trainer that failed does
"""


def test_loader_workers_outlive_the_sigterm_that_stops_the_trainer():
    """A stop signals the trainer's whole process group: its loader workers must not die of
    it, or torch raises in the trainer wherever it is (the save of the last step included);
    and a trainer that exits with live workers must not wait on them."""
    import os
    import signal
    import subprocess
    import sys

    trainer = subprocess.Popen([sys.executable, "-c", _A_TRAINER], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert trainer.stdout.readline().strip() == "ready"
        os.killpg(trainer.pid, signal.SIGTERM)
        out, _ = trainer.communicate("go\n", timeout=120)
        assert out.split() == ["14", "1"], "the loader went on to the end after the stop"
        assert trainer.returncode == 0
    finally:
        if trainer.poll() is None:
            os.killpg(trainer.pid, signal.SIGKILL)
