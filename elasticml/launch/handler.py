"""torch's `RendezvousHandler` over the round protocol (`rounds.py`), for any launcher.

torch elastic's agent (ours, or plain `torchrun`'s) calls four things:
* `next_rendezvous()` after every (re)start: loops `RoundNode.rendezvous_step()` until this
  node is a member of a round, and hands torch the round's rank, world size and rank 0's
  address (from the round itself: no store reads after the decision, so a peer that dies
  now cannot block this node);
* `num_nodes_waiting()` at every monitor tick: `RoundNode.watch()`, at most every
  `WATCH_S`, so polling stays a few store reads per second;
* `shutdown()` when the agent is done. A job that completed is *closed* (nodes still
  waiting leave with success) only when this node's agent reached torch's exit barrier,
  which it does only after its workers succeeded; any other end (a failure, Ctrl-C,
  SIGTERM, a lost store) just says this node left, so the others carry on without it. A
  store that is already gone once the job is over is not an error. The node that hosts the
  c10d store waits (up to `LINGER_S`) for the others to leave before it takes the store down.

A thread of its own beats for this node (`liveness.py`) from the first rendezvous until
`shutdown()`, through its own connection to the store.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from datetime import timedelta

import torch.distributed as dist
from torch.distributed import PrefixStore
from torch.distributed.elastic.rendezvous import (
    RendezvousConnectionError,
    RendezvousError,
    RendezvousGracefulExitError,
    RendezvousHandler,
    RendezvousInfo,
    RendezvousStoreInfo,
    RendezvousTimeoutError,
)

from elasticml.launch.generations import JobFinished, Refused
from elasticml.launch.kv import StoreUnreachable
from elasticml.launch.rounds import POLL_S, NoQuorum, RoundNode

logger = logging.getLogger(__name__)

WATCH_S = 0.2
"""How often `num_nodes_waiting()` really looks at the store (torch asks every 0.1 s)."""
LINGER_S = 10.0
"""How long the node hosting the store waits for the others to leave once the job is over."""
EXIT_BARRIER = "torchelastic/agent/terminal_state"
"""Key prefix of torch's exit barrier (`agent/server/api.py`), reached after a success."""


class RoundRendezvous(RendezvousHandler):
    def __init__(self, node: RoundNode, agent_store, backend: str, hosts_store: bool = False,
                 store_timeout: float = 60.0) -> None:
        self.node, self._agent_store, self._backend = node, agent_store, backend
        self._hosts_store, self._store_timeout = hosts_store, store_timeout
        self._group_store: _GroupStore | None = None
        self._beater = _Beater(node)
        self._watched_at, self._waiting = float("-inf"), 0
        self._done = False

    # --- RendezvousHandler ----------------------------------------------------------------

    def get_backend(self) -> str:
        return self._backend

    @property
    def use_agent_store(self) -> bool:
        return False

    def get_run_id(self) -> str:
        return self.node.run_id

    def next_rendezvous(self) -> RendezvousInfo:
        self._beater.start()
        self._waiting = 0
        try:
            membership = self._until_member()
        except (JobFinished, Refused, NoQuorum) as over:
            self._end(finished=False)
            if isinstance(over, JobFinished):
                raise RendezvousGracefulExitError(f"{over}; this node was not needed") from None
            if isinstance(over, Refused):
                raise RendezvousError(f"refused: {over}") from None
            raise RendezvousTimeoutError(str(over)) from None
        node = self.node
        prefix = f"/elasticml/{node.run_id}/g{node.gen}/r{membership.round}/"
        self._group_store = _GroupStore(PrefixStore(prefix, self._agent_store))
        master = membership.master
        logger.info("run %s: round %d, rank %d of %d", node.run_id, membership.round,
                    membership.rank, membership.world_size)
        return RendezvousInfo(self._group_store, membership.rank, membership.world_size,
                              RendezvousStoreInfo(master.addr, master.port))

    def num_nodes_waiting(self) -> int:
        now = time.monotonic()
        if now - self._watched_at >= WATCH_S:
            self._watched_at = now
            try:
                self._waiting = self.node.watch()
            except StoreUnreachable as err:
                logger.warning("run %s: rendezvous store unreachable: %s", self.node.run_id, err)
        return self._waiting

    def is_closed(self) -> bool:
        return self._done

    def set_closed(self) -> None:
        self._end(finished=True)

    def shutdown(self) -> bool:
        finished = self._group_store is not None and self._group_store.reached_exit_barrier
        self._end(finished)
        return True

    # --- for the observing agent ----------------------------------------------------------

    def regroup(self, reason: str) -> str:
        """This node is about to restart its workers: say so in the round (so the others wait
        for it), and return the round's reason (`join` when a newcomer started it)."""
        try:
            return self.node.end_round(reason, coming=True)
        except StoreUnreachable as err:
            logger.warning("run %s: could not announce the regroup: %s", self.node.run_id, err)
            return reason

    def ending_reason(self) -> str | None:
        with contextlib.suppress(StoreUnreachable):
            return self.node.ending_reason()
        return None

    # --- inside ---------------------------------------------------------------------------

    def _until_member(self):
        unreachable_since = None
        while True:
            try:
                membership = self.node.rendezvous_step()
                unreachable_since = None
            except StoreUnreachable as err:
                unreachable_since = unreachable_since or time.monotonic()
                if time.monotonic() - unreachable_since > self._store_timeout:
                    raise RendezvousConnectionError(
                        f"rendezvous store unreachable for {self._store_timeout:g} s "
                        f"(run {self.node.run_id!r}): {err}") from None
                membership = None
                time.sleep(0.5)
            if membership is not None:
                return membership
            time.sleep(POLL_S)

    def _end(self, finished: bool) -> None:
        if self._done:
            return
        self._done = True
        self._beater.stop()
        try:
            if finished:
                self.node.finish()
                if self._hosts_store:
                    self._linger()
            else:
                self.node.leave()
        except StoreUnreachable as err:
            # Once the job is over the store host may well be gone first: nothing is lost.
            log = logger.info if finished else logger.warning
            log("run %s: rendezvous store gone at the end: %s", self.node.run_id, err)

    def _linger(self) -> None:
        deadline = time.monotonic() + LINGER_S
        while time.monotonic() < deadline:
            self.node.beat()
            if self.node.others_gone():
                return
            time.sleep(0.1)


class _Beater(threading.Thread):
    def __init__(self, node: RoundNode) -> None:
        super().__init__(daemon=True, name="rendezvous-beat")
        self.node = node
        self._halt = threading.Event()
        self._complained = False

    def start(self) -> None:
        if not self.is_alive() and not self._halt.is_set():
            super().start()

    def run(self) -> None:
        while not self._halt.wait(self.node.timings.beat_interval):
            try:
                self.node.beat()
                self._complained = False
            except StoreUnreachable as err:
                if not self._complained:
                    logger.warning("run %s: cannot beat: %s", self.node.run_id, err)
                    self._complained = True

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(timeout=5)


class _GroupStore(dist.Store):
    """The round's store as torch's agent uses it (its exit barrier, nothing else with
    `TORCH_ELASTIC_WORKER_IDENTICAL=1`); notes when the agent reaches that barrier."""

    def __init__(self, inner) -> None:
        super().__init__()
        self._inner = inner
        self.reached_exit_barrier = False

    def _note(self, key: str) -> None:
        if key.startswith(EXIT_BARRIER):
            self.reached_exit_barrier = True

    def set(self, key, value):
        self._note(key)
        return self._inner.set(key, value)

    def get(self, key):
        return self._inner.get(key)

    def add(self, key, value):
        self._note(key)
        return self._inner.add(key, value)

    def compare_set(self, key, expected, desired):
        self._note(key)
        return self._inner.compare_set(key, expected, desired)

    def check(self, keys):
        return self._inner.check(keys)

    def wait(self, keys, timeout: timedelta | None = None):
        if timeout is None:
            return self._inner.wait(keys)
        return self._inner.wait(keys, timeout)

    def multi_get(self, keys):
        return self._inner.multi_get(keys)

    def multi_set(self, keys, values):
        return self._inner.multi_set(keys, values)

    def delete_key(self, key):
        return self._inner.delete_key(key)

    def num_keys(self):
        return self._inner.num_keys()

    def set_timeout(self, timeout):
        super().set_timeout(timeout)
        return self._inner.set_timeout(timeout)
