"""`RoundRendezvous`: membership in numbered rounds over a c10d `Store`, driven by events.

torch's `DynamicRendezvousHandler` learns that a node is gone when its keep-alives stop, which
costs at least two heartbeats plus a fixed 1 s poll per state sync: ~6 s from a node loss to
the next step on our machines. This handler keeps no heartbeats at all. A lost node is
noticed by the training itself: its peers' collectives fail within ~0.1 s, their agents
restart the worker group and come back to the rendezvous, and the dead node simply never
does. Every decision below is taken by whichever member sees it first, with atomic `add`s on
the store, so the same code runs over a c10d `TCPStore` and over torch's `EtcdStore`.

Protocol (keys under `/elasticml/<run_id>/`):
* `closed_rounds` is the number of rounds already decided, so it is also the index `r` of
  the open round. A node joins it with `idx = add("r<r>/count", 1)`; a node that was a
  member of round r-1 also counts itself in `r<r>/back`.
* While the round is open every member polls (every `POLL_S`) and closes it when the first
  of these holds: `max_nodes` are in; every member of round r-1 is back (a join: the running
  group restarted to take the newcomer in); some of round r-1 are back and `regroup_wait`
  has passed since the first of them (a failure: the rest are dead or partitioned); there
  is no running group (the first round, or round r-1's members never came back within
  `group_timeout`) and `last_call` has passed since `min_nodes` were in.
* Closing: the member whose `add("r<r>/closer", 1)` returns 1 writes `r<r>/size` = min(count,
  max_nodes) and increments `closed_rounds`. Members with `idx <= size` form the round
  (rank `idx - 1`); a later node is late and joins round r+1 at once.
* `num_nodes_waiting()` of a member of round r is the count of round r+1 (or at least 1 if
  rounds were decided without it): torch's agent polls it at every monitor tick and
  restarts its workers into the next round when it is positive. That is how joins happen,
  and how a node left behind by a partition finds out.
* `set_closed()` (the job is over) writes `closed`: later joiners get
  `RendezvousClosedError`. No quorum within `join_timeout`: `RendezvousTimeoutError`.

What the agent and the workers get: a `PrefixStore` private to the round
(`/elasticml/<run_id>/r<r>/group/`) and a `MASTER_ADDR`/`MASTER_PORT` written there by rank 0
(`RendezvousStoreInfo.build`), so restarted workers never read a previous group's keys.
`use_agent_store` is False: rank 0's worker hosts its own store for the process group.

Failure modes:
* a node dies between joining a round and the round closing: its peers wait for its rank
  information in the agent's store reads and fail after the store timeout (the c10d
  backend's `read_timeout`, 60 s by default); the job restarts without it;
* the member that won the close dies before writing the size: the others time out at
  `join_timeout` (the window is two store operations wide);
* the store is lost: with the store inside an agent that ends the job; with
  `elasticml rendezvous serve` or etcd the state outlives any training node.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from torch.distributed import PrefixStore
from torch.distributed.elastic.rendezvous import (
    RendezvousClosedError,
    RendezvousConnectionError,
    RendezvousError,
    RendezvousHandler,
    RendezvousInfo,
    RendezvousStoreInfo,
    RendezvousTimeoutError,
)

logger = logging.getLogger(__name__)

POLL_S = 0.03
"""How often a member of an open round looks at the store."""


@dataclass(frozen=True)
class Timings:
    join_timeout: float = 600.0
    """No round formed within this many seconds: give up."""
    last_call: float = 0.5
    """With no running group: wait this long for more nodes once `min_nodes` are in."""
    regroup_wait: float = 0.3
    """Once one member of the running group is back, wait this long for the rest."""
    group_timeout: float = 10.0
    """How long a newcomer waits for the running group to come back and take it in."""


class RoundRendezvous(RendezvousHandler):
    """torch's `RendezvousHandler` over a `Store`, with the round protocol of this module."""

    def __init__(self, store, backend: str, run_id: str, min_nodes: int, max_nodes: int,
                 local_addr: str | None = None, timings: Timings = Timings()) -> None:
        if not 1 <= min_nodes <= max_nodes:
            raise ValueError(f"need 1 <= min_nodes <= max_nodes, got {min_nodes}:{max_nodes}")
        self._store, self._backend, self._run_id = store, backend, run_id
        self._min, self._max = min_nodes, max_nodes
        self._local_addr, self._timings = local_addr, timings
        self._prefix = f"/elasticml/{run_id}/"
        self._round: int | None = None
        """The round this node is a member of, once `next_rendezvous` returned."""

    # --- RendezvousHandler ----------------------------------------------------------------

    def get_backend(self) -> str:
        return self._backend

    @property
    def use_agent_store(self) -> bool:
        return False

    def get_run_id(self) -> str:
        return self._run_id

    def next_rendezvous(self) -> RendezvousInfo:
        previous, self._round = self._round, None
        deadline = time.monotonic() + self._timings.join_timeout
        try:
            rnd, rank, size = self._join(previous, deadline)
        except RendezvousError:
            raise
        except Exception as err:  # noqa: BLE001 - any store failure means the same to torch
            raise RendezvousConnectionError(
                f"rendezvous store unreachable for run {self._run_id!r}: {err}") from err
        self._round = rnd
        group = PrefixStore(f"{self._prefix}r{rnd}/group/", self._store)
        info = RendezvousStoreInfo.build(rank, group, local_addr=self._local_addr)
        logger.info("run %s: round %d, rank %d of %d", self._run_id, rnd, rank, size)
        return RendezvousInfo(group, rank, size, info)

    def is_closed(self) -> bool:
        return self._store.check([self._key("closed")])

    def set_closed(self) -> None:
        self._store.set(self._key("closed"), "1")

    def num_nodes_waiting(self) -> int:
        if self._round is None:
            return 0
        open_round = self._open_round()
        waiting = self._count(open_round, "count")
        if open_round > self._round + 1:  # rounds were decided without this node
            return max(1, waiting)
        return waiting

    def shutdown(self) -> bool:
        self.set_closed()
        return True

    # --- the protocol ---------------------------------------------------------------------

    def _join(self, previous: int | None, deadline: float) -> tuple[int, int, int]:
        """(round, rank, world size) of the first round this node makes it into."""
        rnd = self._open_round()
        while True:
            self._refuse_if_closed()
            idx = self._store.add(self._key(f"r{rnd}/count"), 1)
            returning = previous is not None and previous == rnd - 1
            if returning:
                self._store.add(self._key(f"r{rnd}/back"), 1)
            size = self._await_size(rnd, deadline)
            if idx <= size:
                return rnd, idx - 1, size
            logger.info("run %s: late for round %d, joining round %d", self._run_id, rnd,
                        rnd + 1)
            rnd += 1

    def _await_size(self, rnd: int, deadline: float) -> int:
        """Poll round `rnd` until someone (maybe this node) decides its size."""
        group = self._size(rnd - 1) if rnd > 0 else 0
        started = time.monotonic()
        quorum_at = back_at = None
        while True:
            decided = self._size(rnd)
            if decided is not None:
                return decided
            self._refuse_if_closed()
            now = time.monotonic()
            count, back = self._count(rnd, "count"), self._count(rnd, "back")
            if group and not back and now - started >= self._timings.group_timeout:
                logger.info("run %s: the group of round %d did not come back", self._run_id,
                            rnd - 1)
                group = 0
            if count >= self._min:
                quorum_at = quorum_at or now
                if back:
                    back_at = back_at or now
                if self._ready(count, back, group, now - quorum_at,
                               now - back_at if back_at else 0.0):
                    self._close(rnd)
                    continue
            if now >= deadline:
                raise RendezvousTimeoutError(
                    f"run {self._run_id!r}: {count} of at least {self._min} nodes joined "
                    f"round {rnd} within {self._timings.join_timeout:g} s")
            time.sleep(POLL_S)

    def _ready(self, count: int, back: int, group: int, since_quorum: float,
               since_back: float) -> bool:
        """Whether a round with `min_nodes` in may close now (see the module docstring)."""
        if count >= self._max:
            return True
        if not group:
            return since_quorum >= self._timings.last_call
        if back >= group:
            return True
        return back > 0 and since_back >= self._timings.regroup_wait

    def _close(self, rnd: int) -> None:
        if self._store.add(self._key(f"r{rnd}/closer"), 1) != 1:
            return  # another member is closing it; its size shows up at the next poll
        size = min(self._count(rnd, "count"), self._max)
        self._store.set(self._key(f"r{rnd}/size"), str(size))
        self._store.add(self._key("closed_rounds"), 1)

    # --- store reads ----------------------------------------------------------------------

    def _key(self, name: str) -> str:
        return self._prefix + name

    def _open_round(self) -> int:
        return self._store.add(self._key("closed_rounds"), 0)

    def _count(self, rnd: int, name: str) -> int:
        return self._store.add(self._key(f"r{rnd}/{name}"), 0)

    def _size(self, rnd: int) -> int | None:
        key = self._key(f"r{rnd}/size")
        if not self._store.check([key]):
            return None
        return int(self._store.get(key))

    def _refuse_if_closed(self) -> None:
        if self.is_closed():
            raise RendezvousClosedError(f"run {self._run_id!r} has finished")
