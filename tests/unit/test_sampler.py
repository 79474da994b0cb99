"""The elastic sampler: every sample exactly once per epoch, whatever the world size does."""

import torch

from elasticml.data.sampler import ElasticSampler


def consume(sampler: ElasticSampler, batch: int, steps: int) -> list[int]:
    return [i for _ in range(steps) for i in sampler.next_batch(batch).tolist()]


def test_each_sample_once_per_epoch_with_a_short_last_batch():
    sampler = ElasticSampler(10, seed=3)
    first = consume(sampler, 4, 3)  # 4 + 4 + 2
    assert sorted(first) == list(range(10))
    assert sampler.epoch == 1 and sampler.offset == 0
    second = consume(sampler, 4, 3)
    assert sorted(second) == list(range(10)) and second != first


def test_order_depends_on_position_not_on_world_size_or_restarts():
    straight = ElasticSampler(100, seed=1)
    expected = consume(straight, 8, 20)

    disturbed = ElasticSampler(100, seed=1)
    seen = consume(disturbed, 8, 7)
    state = disturbed.state_dict()  # a crash: a new process restores the position
    resumed = ElasticSampler(100, seed=1)
    resumed.load_state_dict(state)
    seen += consume(resumed, 8, 13)
    assert seen == expected


def test_ranks_split_the_global_batch_without_overlap():
    from elasticml.data.sampler import rank_share

    ids = torch.arange(23)
    for world in (1, 2, 3, 4):
        parts = [rank_share(ids, world, rank, 4).ids.tolist() for rank in range(world)]
        assert sum(parts, []) == ids.tolist()


def test_a_rank_left_without_samples_takes_part_with_zero_weight():
    from elasticml.data.sampler import rank_share

    share = rank_share(torch.tensor([7, 8]), world=3, rank=2, micro_batch=4)
    assert share.weight == 0.0 and share.ids.tolist() == [7]


def test_the_batch_sampler_yields_exactly_what_the_loop_takes_from_the_cursor():
    """Loader workers may read ahead; the micro-batches still follow the cursor's steps."""
    from elasticml.data.sampler import ElasticBatchSampler, rank_share

    cursor = ElasticSampler(50, seed=2)
    cursor.next_batch(16)  # a resumed run: the loader starts where the cursor stands
    batches = iter(ElasticBatchSampler(cursor, 16, micro_batch=3, world=3, rank=1))
    for _ in range(10):  # across the epoch boundary, short last batch included
        share = rank_share(cursor.next_batch(16), 3, 1, 3)
        assert [next(batches) for _ in share.chunks] == [c.tolist() for c in share.chunks]


def test_state_from_another_dataset_is_refused():
    import pytest

    other = ElasticSampler(50, seed=1).state_dict()
    with pytest.raises(ValueError, match="another data set"):
        ElasticSampler(100, seed=1).load_state_dict(other)
