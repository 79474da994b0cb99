"""The generated data sets are functions of the seed and have the promised structure."""

import torch

from elasticml.recipe.schema import RecsysTask, SequenceTask
from elasticml.tasks import recsys_data, sequence


def small_recsys(**changes) -> RecsysTask:
    return RecsysTask(**{"users": 200, "items": 120, "clusters": 6,
                         "interactions_per_user": 12, **changes})


def test_recsys_generator_is_a_function_of_the_seed():
    first, again = recsys_data.generate(small_recsys(), 3), recsys_data.generate(small_recsys(), 3)
    other = recsys_data.generate(small_recsys(), 4)
    assert torch.equal(first.train_items, again.train_items)
    assert torch.equal(first.test_items, again.test_items)
    assert not torch.equal(first.train_items, other.train_items)


def test_recsys_leave_out_split_is_disjoint_per_user():
    data = recsys_data.generate(small_recsys(), 0)
    per_user = data.train_items.view(200, 10)
    assert not (per_user == data.val_items[:, None]).any()
    assert not (per_user == data.test_items[:, None]).any()
    assert not (data.val_items == data.test_items).any()
    assert int(data.owned.sum()) == 200 * 12


def test_recsys_planted_groups_dominate():
    data = recsys_data.generate(small_recsys(affinity=0.9), 0)
    same = data.item_cluster[data.train_items] == data.user_cluster[data.train_users]
    assert same.float().mean() > 0.7  # versus about 1/6 without structure


def test_negatives_are_fixed_per_sample_and_not_owned():
    data = recsys_data.generate(small_recsys(), 0)
    negatives = recsys_data.sample_negatives(data, 8, seed=0)
    assert negatives.shape == (len(data.train_items), 8)
    assert torch.equal(negatives, recsys_data.sample_negatives(data, 8, seed=0))
    clash = data.owned[data.train_users[:, None].expand(-1, 8), negatives]
    assert clash.float().mean() < 0.01


def test_sequences_follow_their_rule():
    config = SequenceTask(vocab=32, length=16, samples=500, lag=2, noise=0.2)
    tokens, ruled = sequence.generate(config, 0)
    again, _ = sequence.generate(config, 0)
    assert torch.equal(tokens, again)
    assert not ruled[:, :2].any()
    assert 0.75 < ruled[:, 2:].float().mean() < 0.85
    # one hidden permutation: the same earlier token always leads to the same ruled token
    earlier, later = tokens[:, :-2][ruled[:, 2:]], tokens[:, 2:][ruled[:, 2:]]
    for value in earlier.unique():
        assert later[earlier == value].unique().numel() == 1
