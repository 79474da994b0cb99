"""elasticml's rendezvous backends, registered with torch as `elasticml-c10d` / `elasticml-etcd-v2`.

torch finds them through the `torchrun.handlers` entry point (see pyproject.toml), so the
`torchrun` line printed by `--dry-run` uses them too. Both run `rounds.RoundRendezvous`, a
handler without heartbeats that forms a new round as soon as the nodes of the last one are
back (see its module for the protocol), over the store of torch's own storage backend: the
c10d `TCPStore` (hosted by an agent or by `elasticml rendezvous serve`) or etcd's v2 API
through torch's `EtcdStore`.

Configuration keys (`--rdzv-conf` or `RendezvousParameters`), seconds as floats:
join_timeout, last_call_timeout, regroup_wait, group_timeout, training_hash, plus the
storage backend's own (is_host, read_timeout, protocol, ...).

`training_hash` makes the handler a `RecipeGuard`: before a node takes part in any round it
compares the hash of its resolved recipe (`recipe.load.training_hash`) with the one the run
was started with, kept in the rendezvous store under the run id. A node with another recipe
is refused before it joins, so the running nodes never see it and carry on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

BACKENDS = ("elasticml-c10d", "elasticml-etcd-v2")


def handler_factory() -> Callable[[Any], Any]:
    """Entry point for `torchrun.handlers`: torch calls this, then calls what it returns."""
    return create_handler


def register() -> None:
    """Register both backends in this process (the entry point does it for torchrun)."""
    from torch.distributed.elastic.rendezvous import rendezvous_handler_registry

    for name in BACKENDS:
        rendezvous_handler_registry.register(name, create_handler)


def create_handler(params):
    from elasticml.launch.rounds import RoundRendezvous, Timings

    _, store = _storage(params)
    timings = Timings(
        join_timeout=_seconds(params, "join_timeout", Timings.join_timeout),
        last_call=_seconds(params, "last_call_timeout", Timings.last_call),
        regroup_wait=_seconds(params, "regroup_wait", Timings.regroup_wait),
        group_timeout=_seconds(params, "group_timeout", Timings.group_timeout),
    )
    handler = RoundRendezvous(store, params.backend, params.run_id, params.min_nodes,
                              params.max_nodes, params.local_addr, timings)
    expected = params.get("training_hash")
    if not expected:
        return handler
    from elasticml.launch.recipe_guard import RecipeGuard

    return RecipeGuard(handler, store, params.run_id, expected)


def _storage(params):
    """torch's own storage backend, chosen by our backend's suffix: (backend, store)."""
    if params.backend.endswith("etcd-v2"):
        from torch.distributed.elastic.rendezvous.etcd_rendezvous_backend import create_backend
    else:
        from torch.distributed.elastic.rendezvous.c10d_rendezvous_backend import create_backend
    return create_backend(params)


def _seconds(params, key: str, default: float) -> float:
    return float(params.get(key, default))
