"""Which nodes of a job are alive, judged from beat counters on this node's own clock.

Every agent rewrites its beat key (`.../beat/<node id>`) with an increasing counter every
`beat_interval` seconds, from a thread of its own, for as long as it runs: while its workers
train, while it stops them, and while it waits in a rendezvous. A node whose counter has not
changed for `node_timeout` seconds of *this* node's monotonic clock is taken to be lost. No
wall-clock time crosses the network, so skewed clocks cannot make a live node look dead.
An agent that leaves on purpose writes `left` instead of a number, so the others need not
wait out the timeout for it.

Beats are not how a lost node is usually noticed (its peers' collectives fail within
milliseconds); they cover the moments when no collective is running: a node that dies while
it joins a round or while the workers start, a whole group gone while a spare waits, and a
store left over from a job that no longer runs.
"""

from __future__ import annotations

import threading
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
