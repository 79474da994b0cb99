"""A seeded generator of implicit feedback with structure a recommender can find.

The world it simulates:
* every user and every item belongs to one of `clusters` taste groups (uniformly at random);
* items have a popularity that falls off as a Zipf law, `1 / rank ** popularity`, over a
  random ranking of the items;
* each user interacts with `interactions_per_user` distinct items. Each pick comes from the
  user's own group with probability about `affinity` (weighted by popularity inside the
  group) and otherwise from the whole catalogue by popularity.

So a most-popular list is a real but weak baseline (it gets the `1 - affinity` share of
popularity-driven picks right), while a model that discovers the groups from co-occurrence
can do much better. The groups are never shown to the model.

Leave-out split per user: of each user's items, one (at random) is the test item, one the
validation item, the rest are training interactions. Everything is a function of the seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from elasticml.recipe.schema import RecsysTask


@dataclass
class Interactions:
    """The generated data. `owned[u, i]` is True when user `u` interacted with item `i`."""

    train_users: torch.Tensor
    train_items: torch.Tensor
    val_items: torch.Tensor
    """One held-out item per user (user id = position)."""
    test_items: torch.Tensor
    owned: torch.Tensor
    user_cluster: torch.Tensor | None = None
    """Planted taste groups (generated data only)."""
    item_cluster: torch.Tensor | None = None


def generate(config: RecsysTask, seed: int) -> Interactions:
    generator = torch.Generator().manual_seed(seed)
    users, items, per_user = config.users, config.items, config.interactions_per_user
    user_cluster = torch.randint(config.clusters, (users,), generator=generator)
    item_cluster = torch.randint(config.clusters, (items,), generator=generator)
    rank = torch.randperm(items, generator=generator).double()
    popularity = (rank + 1) ** -config.popularity
    popularity /= popularity.sum()

    same_group = item_cluster[None, :] == user_cluster[:, None]
    in_group = popularity * same_group
    in_group /= in_group.sum(1, keepdim=True).clamp_min(1e-12)
    weights = config.affinity * in_group + (1 - config.affinity) * popularity
    picks = torch.multinomial(weights, per_user, replacement=False, generator=generator)
    # multinomial returns picks in draw order (popular first): shuffle before holding out
    order = torch.rand(users, per_user, generator=generator).argsort(1)
    picks = picks.gather(1, order)

    owned = torch.zeros(users, items, dtype=torch.bool)
    owned[torch.arange(users)[:, None], picks] = True
    train = picks[:, 2:]
    return Interactions(
        train_users=torch.arange(users).repeat_interleave(per_user - 2),
        train_items=train.reshape(-1),
        val_items=picks[:, 1].clone(),
        test_items=picks[:, 0].clone(),
        owned=owned,
        user_cluster=user_cluster,
        item_cluster=item_cluster,
    )


def sample_negatives(data: Interactions, count: int, seed: int, rounds: int = 4) -> torch.Tensor:
    """`count` negative items per training interaction, [interactions, count].

    A fixed table drawn from the seed, so the negatives of a sample are a function of (seed,
    sample id) only: every world size, every restart computes the same loss. Items the user
    owns are redrawn (a few rounds leave a negligible remainder).
    """
    generator = torch.Generator().manual_seed(seed + 7919)
    items = data.owned.shape[1]
    users = data.train_users[:, None].expand(-1, count)
    negatives = torch.randint(items, users.shape, generator=generator)
    for _ in range(rounds):
        clash = data.owned[users, negatives]
        if not clash.any():
            break
        negatives[clash] = torch.randint(items, (int(clash.sum()),), generator=generator)
    return negatives
