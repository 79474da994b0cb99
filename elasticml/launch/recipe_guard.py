"""Refuse a node that joins a run with another recipe (training hash), before it joins.

The first node of a run writes the hash of its resolved, training-relevant recipe
(`recipe.load.training_hash`) into the rendezvous store under the run id; every later node
compares its own before it takes part in any round. A node that differs gets a one-line
`RendezvousError` and exits; the running nodes never see it, so they carry on undisturbed.
When a job ends cleanly its hash is marked closed, so the next job with the same run id may
change the recipe (for example raise `trainer.max_steps`).
"""

from __future__ import annotations

from torch.distributed.elastic.rendezvous import (
    RendezvousError,
    RendezvousHandler,
    RendezvousInfo,
)

CLOSED = "closed"


def hash_key(run_id: str) -> str:
    return f"elasticml/{run_id}/training_hash"


def claim_training_hash(store, run_id: str, value: str) -> str:
    """The run's training hash: the first node's, or `value` when this node is the first (or
    the run's previous job closed). Any store with an atomic `add` works (TCPStore, etcd)."""
    key = hash_key(run_id)
    if store.add(f"{key}/claims", 1) == 1:
        store.set(key, value)
        return value
    current = store.get(key).decode()
    if current == CLOSED:
        store.set(key, value)
        return value
    return current


class RecipeGuard(RendezvousHandler):
    """torch's handler, behind the check that this node trains the run's recipe."""

    def __init__(self, inner: RendezvousHandler, store, run_id: str, training_hash: str) -> None:
        self._inner, self._store, self._run_id = inner, store, run_id
        found = claim_training_hash(store, run_id, training_hash)
        if found != training_hash:
            raise RendezvousError(
                f"refused: run {run_id!r} is training another recipe (training hash {found}, "
                f"this node {training_hash}); start every node with the same recipe and "
                "overrides, or use another --run-id")

    def get_backend(self) -> str:
        return self._inner.get_backend()

    @property
    def use_agent_store(self) -> bool:
        return self._inner.use_agent_store

    def next_rendezvous(self) -> RendezvousInfo:
        return self._inner.next_rendezvous()

    def is_closed(self) -> bool:
        return self._inner.is_closed()

    def set_closed(self) -> None:
        self._inner.set_closed()

    def num_nodes_waiting(self) -> int:
        return self._inner.num_nodes_waiting()

    def get_run_id(self) -> str:
        return self._inner.get_run_id()

    def shutdown(self) -> bool:
        closed = self._inner.shutdown()
        if closed:  # the job is over: the next job with this run id may use another recipe
            self._store.set(hash_key(self._run_id), CLOSED)
        return closed
