"""elasticml's rendezvous backends, registered with torch as `elasticml-c10d` / `elasticml-etcd-v2`.

torch finds them through the `torchrun.handlers` entry point (see pyproject.toml), so the
`torchrun` line printed by `--dry-run` uses them too. They keep torch's own state machine and
storage backends and differ in one way: every timing is read as a float, so a heartbeat of
1 s and a last call of 1 s are possible (torchrun's stock handlers parse whole seconds and
default to 5 s heartbeats and a 30 s last call).

Configuration keys (`--rdzv-conf` or `RendezvousParameters`): join_timeout,
last_call_timeout, close_timeout, keep_alive_interval, keep_alive_max_attempt,
training_hash, plus the storage backend's own (is_host, read_timeout, protocol, ...).

`training_hash` makes the handler a `RecipeGuard`: before a node takes part in any round it
compares the hash of its resolved recipe (`recipe.load.training_hash`) with the one the run
was started with, kept in the rendezvous store under the run id. A node with another recipe
is refused before it joins, so the running nodes never see it and carry on.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
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
    from torch.distributed.elastic.rendezvous.dynamic_rendezvous import (
        DynamicRendezvousHandler,
        RendezvousTimeout,
    )

    store_backend, store = _storage(params)
    store_backend = _named(store_backend, params.backend)
    timeout = RendezvousTimeout(
        join=_seconds(params, "join_timeout", 600),
        last_call=_seconds(params, "last_call_timeout", 1),
        close=_seconds(params, "close_timeout", 30),
        heartbeat=_seconds(params, "heartbeat", 5),
    )
    handler = DynamicRendezvousHandler.from_backend(
        run_id=params.run_id,
        store=store,
        backend=store_backend,
        min_nodes=params.min_nodes,
        max_nodes=params.max_nodes,
        local_addr=params.local_addr,
        timeout=timeout,
        keep_alive_interval=float(params.get("keep_alive_interval", 1)),
        keep_alive_max_attempt=int(params.get("keep_alive_max_attempt", 2)),
    )
    expected = params.get("training_hash")
    if not expected:
        return handler
    from elasticml.launch.recipe_guard import RecipeGuard

    return RecipeGuard(handler, store, params.run_id, expected)


def _storage(params):
    """torch's own storage backends, chosen by our backend's suffix."""
    if params.backend.endswith("etcd-v2"):
        from torch.distributed.elastic.rendezvous.etcd_rendezvous_backend import create_backend
    else:
        from torch.distributed.elastic.rendezvous.c10d_rendezvous_backend import create_backend
    return create_backend(params)


def _named(backend, name: str):
    """torch insists that the handler's backend name equals the one asked for."""
    from torch.distributed.elastic.rendezvous.dynamic_rendezvous import RendezvousBackend

    class Named(RendezvousBackend):
        @property
        def name(self) -> str:
            return name

        def get_state(self):
            return backend.get_state()

        def set_state(self, state, token=None):
            return backend.set_state(state, token)

    return Named()


def _seconds(params, key: str, default: float) -> timedelta:
    return timedelta(seconds=float(params.get(key, default)))
