"""Batch plans: a fixed global batch at every world size, or linear scaling on request."""

import pytest

from elasticml.recipe.schema import TrainerConfig
from elasticml.train.batching import plan_batches


def test_fixed_policy_keeps_the_global_batch():
    trainer = TrainerConfig(max_steps=1, global_batch_size=64, micro_batch_size=16)
    for world in (1, 2, 3, 5):
        plan = plan_batches(trainer, world, 1)
        assert plan.global_batch == sum(plan.shares) == 64
        assert max(plan.shares) - min(plan.shares) <= 1
        assert plan.lr_scale == 1.0
    three = plan_batches(trainer, 3, 1)
    assert three.shares == (22, 21, 21)
    assert (three.micro_batch, three.accumulation) == (16, 2)
    assert three.share_range(1) == (22, 43)


def test_linear_policy_grows_the_batch_and_the_lr():
    trainer = TrainerConfig(max_steps=1, global_batch_size=32, batch_policy="linear")
    plan = plan_batches(trainer, 4, 2)
    assert plan.global_batch == 64 and plan.shares == (16, 16, 16, 16)
    assert plan.lr_scale == 2.0


def test_ranges_that_cannot_be_served():
    with pytest.raises(ValueError, match="smaller than the world size"):
        plan_batches(TrainerConfig(max_steps=1, global_batch_size=3), 4, 1)
    with pytest.raises(ValueError, match="multiple of the smallest world size"):
        plan_batches(TrainerConfig(max_steps=1, global_batch_size=33, batch_policy="linear"), 2, 2)
