"""Random streams derived from (seed, step, rank): different per rank, the same on a resume."""

import random

import numpy as np
import torch

from elasticml.train.randomness import seed_step


def draws(seed: int, step: int, rank: int) -> tuple:
    seed_step(seed, step, rank)
    mask = torch.nn.functional.dropout(torch.ones(64), p=0.5, training=True)
    return mask.tolist(), float(np.random.random()), random.random()


def test_ranks_draw_different_dropout_masks_and_numbers():
    rank0, rank1 = draws(0, 5, 0), draws(0, 5, 1)
    assert all(a != b for a, b in zip(rank0, rank1, strict=True))


def test_a_step_draws_the_same_whatever_came_before_it():
    expected = draws(0, 7, 1)
    for earlier in range(7):
        draws(0, earlier, 1)
    assert draws(0, 7, 1) == expected
    assert draws(0, 8, 1) != expected and draws(1, 7, 1) != expected
