"""The trainer in this process, as a world of one (gloo on loopback): what a resize does to
the schedule and the end of training, and a SIGTERM that arrives during an evaluation."""

from __future__ import annotations

import contextlib
import faulthandler
import math
import os
import signal

import pytest
import torch
import torch.distributed as dist

from elasticml.recipe.load import load_recipe
from elasticml.train.loop import StopRequested, Trainer
from elasticml.train.optim import lr_factor
from tests.integration.cluster import TINY, free_port


@pytest.fixture
def solo(tmp_path, monkeypatch):
    """Makes set-up trainers of world size 1; each one's process group is closed after it."""
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    for name, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT", raising=False)
    monkeypatch.delenv("ELASTICML_JOB_KEY", raising=False)
    sigterm = signal.getsignal(signal.SIGTERM)
    threads = torch.get_num_threads()

    def make(*overrides: str) -> Trainer:
        if dist.is_initialized():
            dist.destroy_process_group()
        monkeypatch.setenv("MASTER_PORT", str(free_port()))
        recipe = load_recipe(TINY, [f"run.dir={tmp_path / 'runs'}", "trainer.eval_every=0",
                                    "trainer.checkpoint_every=0", *overrides])
        trainer = Trainer(recipe)
        trainer.setup()
        return trainer

    try:
        yield make
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        signal.signal(signal.SIGTERM, sigterm)
        with contextlib.suppress(RuntimeError):
            faulthandler.unregister(signal.SIGUSR1)
        torch.set_num_threads(threads)


LINEAR = ("trainer.batch_policy=linear", "trainer.epochs=1", "trainer.max_steps=null",
          "trainer.global_batch_size=32", "schedule.name=cosine")
# One worker, but the smallest world the recipe allows is 2 (then 1): the linear policy gives
# this rank half the recipe's batch and half its learning rate, then all of both, as a rank of
# a job that went from 2 to 4 workers would see.
HALF = ("elastic.nnodes=2:4", "elastic.nproc_per_node=1")
WHOLE = ("elastic.nnodes=1:2", "elastic.nproc_per_node=1")


def steps(trainer: Trainer, count: int) -> None:
    for _ in range(count):
        trainer.train_step()
        trainer.step += 1


def test_the_first_step_after_a_resize_uses_the_new_lr_scale(solo):
    before = solo(*LINEAR, *HALF)
    assert before.plan.lr_scale == 0.5
    steps(before, 5)
    saved = before.state()

    after = solo(*LINEAR, *WHOLE)
    after.load_state(saved)
    used = []
    after.optimizer.register_step_pre_hook(
        lambda optimizer, args, kwargs: used.append(optimizer.param_groups[0]["lr"]))
    steps(after, 1)
    schedule_steps = math.ceil(len(after.splits["train"]) / 32)  # one epoch in steps of 32
    position = saved["sampler"]["offset"] / 32  # 5 steps of 16 samples: 2.5 steps of 32
    assert used == [pytest.approx(0.003 * 1.0 * lr_factor(after.recipe.schedule, position,
                                                           schedule_steps))]


def test_linear_policy_with_epochs_ends_after_an_epoch_of_samples_across_a_resize(solo):
    before = solo(*LINEAR, *HALF)
    steps(before, 20)
    saved = before.state()

    after = solo(*LINEAR, *WHOLE)
    after.load_state(saved)
    after.train()
    assert after.sampler.samples_seen == len(after.splits["train"])


def _sigterm_when_evaluating(trainer: Trainer, split: str) -> list[str]:
    """A real SIGTERM to this process as the evaluation of `split` begins; returns the splits
    whose evaluation ran to the end (the tiny recipe's splits are small enough to be scored
    whole, so each evaluation gets the split object itself)."""
    evaluate, finished = trainer.task.evaluate, []
    names = {id(data): name for name, data in trainer.splits.items()}

    def evaluate_and_get_stopped(model, data, device, shard):
        if names[id(data)] == split:
            os.kill(os.getpid(), signal.SIGTERM)
        metrics = evaluate(model, data, device, shard)
        finished.append(names[id(data)])
        return metrics

    trainer.task.evaluate = evaluate_and_get_stopped
    return finished


def test_a_sigterm_during_validation_stops_it_at_the_next_batch(solo):
    trainer = solo()
    steps(trainer, 3)
    finished = _sigterm_when_evaluating(trainer, "val")
    with pytest.raises(StopRequested):
        trainer.validate()
    assert finished == []


@pytest.mark.parametrize("split", ["val", "test"])
def test_a_sigterm_during_the_final_evaluations_stops_them(solo, split):
    trainer = solo("trainer.eval_every=0")
    steps(trainer, 3)
    finished = _sigterm_when_evaluating(trainer, split)
    with pytest.raises(StopRequested):
        trainer.finish()
    assert split not in finished and "train" not in finished
    assert not (trainer.run_dir.reports / "final.json").exists()
