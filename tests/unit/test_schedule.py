"""How long training lasts and where the learning-rate schedule stands: functions of the
samples consumed, so a world-size change moves neither the end nor the schedule."""

import math

import pytest
import torch

from elasticml.data.sampler import ElasticSampler
from elasticml.recipe.schema import OptimizerConfig, ScheduleConfig, TrainerConfig
from elasticml.train.batching import Horizon, plan_batches
from elasticml.train.optim import LearningRate, build_optimizer, lr_factor

N = 1000  # training samples


def run_to_the_end(trainer: TrainerConfig, worlds: list[int]) -> tuple[int, int]:
    """(steps, samples) of a run whose world size is `worlds[k]` for its k-th tenth."""
    horizon = Horizon.of(trainer, N)
    sampler, step = ElasticSampler(N, 0), 0
    while not horizon.done(step, sampler.samples_seen):
        world = worlds[min(len(worlds) - 1, int(10 * sampler.samples_seen / horizon.samples))]
        sampler.next_batch(plan_batches(trainer, world, 1).global_batch)
        step += 1
    return step, sampler.samples_seen


def test_linear_policy_with_epochs_ends_after_the_same_samples_whatever_the_resizes():
    trainer = TrainerConfig(epochs=3, global_batch_size=20, batch_policy="linear")
    _, calm = run_to_the_end(trainer, [1])
    _, grown = run_to_the_end(trainer, [1, 1, 4, 4, 4, 2])
    assert calm == grown == 3 * N


def test_fixed_policy_with_epochs_ends_at_the_same_step_as_before():
    trainer = TrainerConfig(epochs=2, global_batch_size=64)
    steps, samples = run_to_the_end(trainer, [1, 3, 2])
    assert steps == 2 * math.ceil(N / 64) and samples == 2 * N
    assert Horizon.of(trainer, N).total_steps(0, 0, 64) == steps


def test_the_schedule_position_is_the_progress_in_steps_of_the_recipe_s_batch():
    trainer = TrainerConfig(epochs=2, global_batch_size=20, batch_policy="linear")
    horizon = Horizon.of(trainer, N)
    assert horizon.schedule_steps == 2 * N // 20
    assert horizon.position(step=7, samples_seen=7 * 40) == 14  # world 2: twice the batch
    fixed = Horizon.of(TrainerConfig(max_steps=50, global_batch_size=20), N)
    assert fixed.position(step=7, samples_seen=123) == 7 and fixed.schedule_steps == 50


def test_the_lr_of_every_step_uses_the_scale_of_the_world_it_runs_in():
    """A state saved at one world size and loaded at another: the first step already uses the
    new scale (torch's LambdaLR would keep the restored optimizer's learning rate)."""
    schedule = ScheduleConfig(name="cosine", warmup_steps=0)
    trainer = TrainerConfig(epochs=1, global_batch_size=20, batch_policy="linear")
    horizon = Horizon.of(trainer, N)
    model = torch.nn.Linear(2, 1)
    sgd = OptimizerConfig(name="sgd", lr=0.1, momentum=0.0)
    optimizer = build_optimizer(sgd, model.parameters())
    LearningRate(schedule, optimizer, horizon, scale=1.0).apply(step=5, samples_seen=100)
    saved = optimizer.state_dict()

    resumed = build_optimizer(sgd, model.parameters())
    resumed.load_state_dict(saved)
    used = LearningRate(schedule, resumed, horizon, scale=3.0).apply(step=5, samples_seen=100)
    expected = 0.1 * 3.0 * lr_factor(schedule, 5.0, horizon.schedule_steps)
    assert used == pytest.approx(expected)
    assert resumed.param_groups[0]["lr"] == pytest.approx(expected)
