"""Which nodes of a job are alive, judged from beat counters on this node's own clock.

Every agent rewrites its beat key (`.../beat/<node id>`) with an increasing counter every
`beat_interval` seconds, from a thread of its own, for as long as it runs: while its workers
train, while it stops them, and while it waits in a rendezvous. A node whose counter has not
changed for `node_timeout` seconds of *this* node's monotonic clock is taken to be lost. No
wall-clock time crosses the network, so skewed clocks cannot make a live node look dead.
An agent that leaves on purpose writes `left` instead of a number, so the others need not
wait out the timeout for it.

The clock is this node's monotonic clock, except that it stands still while this node gets
no answer from the store (`StoreClock`): while etcd elects a new leader, every node's writes
and reads wait, and a beat that could not be written must not be taken for a node's death.

Beats are not how a lost node is usually noticed (its peers' collectives fail within
milliseconds); they cover the moments when no collective is running: a node that dies while
it joins a round or while the workers start, a whole group gone while a spare waits, and a
store left over from a job that no longer runs.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

LEFT = b"left"


@dataclass
class _Seen:
    value: bytes | None
    changed_at: float
    """When this node first saw `value` (or first looked, for a node never seen)."""
    advanced: bool = False
    """The value changed at least once while this node watched: proof of life."""


class Liveness:
    """Beat observations of the nodes this node cares about; safe to use from two threads."""

    def __init__(self, node_timeout: float, clock: Callable[[], float]) -> None:
        self.node_timeout, self.clock = node_timeout, clock
        self._seen: dict[str, _Seen] = {}
        self._lock = threading.Lock()

    def observe(self, node_id: str, value: bytes | None) -> None:
        now = self.clock()
        with self._lock:
            seen = self._seen.get(node_id)
            if seen is None:
                self._seen[node_id] = _Seen(value, now)
            elif seen.value is None and value is not None and not seen.advanced:
                seen.value = value  # the first value read is no proof of life: only a change
            elif value != seen.value:
                self._seen[node_id] = _Seen(value, now, advanced=value not in (LEFT, None))

    def watch(self, node_ids) -> None:
        """Start the clock for nodes not seen yet (their beat is read at the next beat)."""
        now = self.clock()
        with self._lock:
            for node_id in node_ids:
                self._seen.setdefault(node_id, _Seen(None, now))

    def left(self, node_id: str) -> bool:
        with self._lock:
            seen = self._seen.get(node_id)
            return seen is not None and seen.value == LEFT

    def alive(self, node_id: str) -> bool:
        """Not known to have left, and its beat moved within `node_timeout` (a node first
        seen less than `node_timeout` ago gets the benefit of the doubt)."""
        now = self.clock()
        with self._lock:
            seen = self._seen.get(node_id)
            if seen is None:
                return True
            if seen.value == LEFT:
                return False
            return now - seen.changed_at < self.node_timeout

    def proven_alive(self, node_id: str) -> bool:
        """Its beat moved while this node watched, recently."""
        with self._lock:
            seen = self._seen.get(node_id)
            advanced = seen is not None and seen.advanced
        return advanced and self.alive(node_id)

    def watched(self) -> list[str]:
        with self._lock:
            return list(self._seen)

    def forget(self, node_ids) -> None:
        with self._lock:
            for node_id in node_ids:
                self._seen.pop(node_id, None)


class StoreClock:
    """Monotonic seconds that stand still while the store does not answer this node.

    Every store request is bracketed by `begin()` and `end()` (`kv.ClockedKV` does it). The
    clock stops once a request has waited `grace` seconds for its answer, or when one fails,
    and runs again at the next answer, once no other request is overdue. So the time etcd takes
    to elect a leader, or a member that holds a request until it times out, counts against no
    node's beat: the other nodes could not write theirs either, and this node could not have
    read them."""

    def __init__(self, grace: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.grace, self._clock = grace, clock
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._pending: dict[int, float] = {}
        self._paused = 0.0
        self._stopped_since: float | None = None

    def __call__(self) -> float:
        now = self._clock()
        with self._lock:
            self._settle(now)
            stopped = now - self._stopped_since if self._stopped_since is not None else 0.0
            return now - self._paused - stopped

    def begin(self) -> int:
        request = next(self._ids)
        with self._lock:
            self._pending[request] = self._clock()
        return request

    def end(self, request: int, answered: bool) -> None:
        now = self._clock()
        with self._lock:
            self._settle(now)
            self._pending.pop(request, None)
            if not answered:
                if self._stopped_since is None:
                    self._stopped_since = now
            elif self._stopped_since is not None and not self._overdue(now):
                self._paused += now - self._stopped_since
                self._stopped_since = None

    def _overdue(self, now: float) -> list[float]:
        return [start + self.grace for start in self._pending.values()
                if now - start >= self.grace]

    def _settle(self, now: float) -> None:
        overdue = self._overdue(now)
        if overdue and self._stopped_since is None:
            self._stopped_since = min(overdue)
