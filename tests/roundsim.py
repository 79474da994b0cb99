"""A simulated cluster for the round protocol: nodes over one in-memory store, a fake clock,
and crashes between any two store operations.

Each `SimNode` plays what an agent does with its `RoundNode`: find the generation, join
rounds, and, as a member, "train": it regroups when `watch()` says so, and when a peer of its
round is no longer training with it (what a failed collective tells real workers).
Everything runs in one thread, one step at a time, in whatever order the test picks.
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass, field

from elasticml.launch.generations import JobFinished, Refused
from elasticml.launch.kv import MemoryKV, SealedKV
from elasticml.launch.records import Card, Terms
from elasticml.launch.rounds import Membership, RoundNode, Timings

KEY = b"k" * 32
TERMS = Terms("hash", 1, "1:2", "steps:200")


class Crashed(Exception):
    """The simulated process died in the middle of a store operation."""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CrashingKV(MemoryKV):
    """A connection to the shared dict that dies after `budget` more operations; the last
    write happens or not (`last_lands`), as with a process killed around a network write."""

    def __init__(self, shared: MemoryKV, owner: SimNode) -> None:
        super().__init__(shared.data, shared._lock)
        self.owner = owner

    def get(self, key):
        return self._spend(lambda: MemoryKV.get(self, key), write=False)

    def set(self, key, value):
        return self._spend(lambda: MemoryKV.set(self, key, value))

    def compare_and_set(self, key, expected, desired):
        return self._spend(lambda: MemoryKV.compare_and_set(self, key, expected, desired))

    def delete(self, keys):
        return self._spend(lambda: MemoryKV.delete(self, keys))

    def _spend(self, operation, write: bool = True):
        owner = self.owner
        if owner.budget is not None:
            if owner.budget <= 0:
                if write and owner.last_lands:
                    operation()
                owner.die()
                raise Crashed(owner.name)
            owner.budget -= 1
        return operation()

    def clone(self):
        return CrashingKV(MemoryKV(self.data, self._lock), self.owner)


@dataclass
class SimNode:
    name: str
    node: RoundNode
    state: str = "joining"
    """joining | member | dead | finished | refused"""
    budget: int | None = None
    last_lands: bool = False
    regroups: int = 0
    paused: bool = False
    """Beats but takes no steps (an agent busy stopping its workers)."""
    memberships: list[Membership] = field(default_factory=list)

    @property
    def live(self) -> bool:
        return self.state in ("joining", "member")

    def die(self) -> None:
        self.state = "dead"


class Sim:
    def __init__(self, min_nodes: int = 1, max_nodes: int = 2, timings: Timings | None = None,
                 key: bytes = KEY) -> None:
        self.clock = Clock()
        self.store = MemoryKV()
        self.min, self.max = min_nodes, max_nodes
        self.timings = timings or Timings(join_timeout=10_000)
        self.key = key
        self.nodes: list[SimNode] = []
        self.decisions: dict[tuple[int, int], tuple[str, ...]] = {}
        """(generation, round) -> member ids, as every member saw it."""
        self._ports = itertools.count(20000)

    # --- cast ----------------------------------------------------------------------------

    def add_node(self, terms: Terms = TERMS, key: bytes | None = None) -> SimNode:
        name = f"n{len(self.nodes)}"
        sim_node = SimNode(name, None)  # type: ignore[arg-type]
        kv = SealedKV(CrashingKV(self.store, sim_node), key or self.key)
        sim_node.node = RoundNode(
            kv, "job", terms, Card(f"{name}-id", name, "10.0.0.1", 0, 1),
            self.min, self.max, self.timings, self.clock, lambda: next(self._ports),
            beat_kv=kv.clone())
        self.nodes.append(sim_node)
        return sim_node

    def live(self) -> list[SimNode]:
        return [n for n in self.nodes if n.live]

    # --- what an agent does ------------------------------------------------------------

    def step(self, sim_node: SimNode) -> None:
        if not sim_node.live or sim_node.paused:
            return
        try:
            self._step(sim_node)
        except Crashed:
            sim_node.state = "dead"
        except JobFinished:
            sim_node.state = "finished"
        except Refused:
            sim_node.state = "refused"

    def _step(self, sim_node: SimNode) -> None:
        node = sim_node.node
        if sim_node.state == "joining":
            membership = node.rendezvous_step()
            if membership is not None:
                self._record(sim_node, membership)
                sim_node.state = "member"
        elif sim_node.state == "member":
            if not self._peers_train_with(sim_node):
                self._regroup(sim_node, "failure")  # a collective failed
            elif node.watch() > 0:
                self._regroup(sim_node, "membership")

    def beat(self, sim_node: SimNode) -> None:
        if sim_node.live:
            try:
                sim_node.node.beat()
            except Crashed:
                sim_node.state = "dead"

    def leave(self, sim_node: SimNode) -> None:
        """A graceful exit (SIGTERM, Ctrl-C, an error): the node says it left."""
        if sim_node.live:
            with contextlib.suppress(Crashed):
                sim_node.node.leave()
            sim_node.state = "dead"

    def finish(self) -> None:
        """Training completed: every member of the newest group finishes the job."""
        for sim_node in self.live():
            if sim_node.state == "member":
                try:
                    sim_node.node.finish()
                except Crashed:
                    continue
                sim_node.state = "finished"

    def _regroup(self, sim_node: SimNode, reason: str) -> None:
        sim_node.regroups += 1
        sim_node.node.end_round(reason, coming=True)
        sim_node.state = "joining"

    def _peers_train_with(self, sim_node: SimNode) -> bool:
        """False once a peer of this node's round has died or left that round: what a failed
        collective tells real workers. A peer still on its way into the round is fine (real
        workers wait for it in `init_process_group`)."""
        mine = sim_node.node.membership
        peers = {n.node.me.id: n for n in self.nodes}
        for node_id in mine.ids:
            peer = peers[node_id]
            if not peer.live:
                return False
            theirs = peer.node.membership
            if theirs is not None and (theirs.round, theirs.ids) == (mine.round, mine.ids):
                if peer.state != "member":
                    return False
                continue
            joining = peer.node._joining
            if peer.state != "joining" or joining is None or joining.number > mine.round:
                return False
        return True

    def _record(self, sim_node: SimNode, membership: Membership) -> None:
        sim_node.memberships.append(membership)
        key = (sim_node.node.gen, membership.round)
        ids = tuple(membership.ids)
        seen = self.decisions.setdefault(key, ids)
        assert seen == ids, f"round {key} decided twice: {seen} and {ids}"
        assert len(set(ids)) == len(ids), f"a node twice in round {key}: {ids}"
        assert self.min <= len(ids) <= self.max, f"round {key} has {len(ids)} members"

    # --- time ------------------------------------------------------------------------------

    def run(self, seconds: float, tick: float = 0.1, steps_per_tick: int = 3) -> None:
        """Every live node beats on time and steps; the clock moves `seconds`."""
        elapsed = 0.0
        while elapsed < seconds:
            for sim_node in self.live():
                self.beat(sim_node)
            for _ in range(steps_per_tick):
                for sim_node in self.live():
                    self.step(sim_node)
            self.clock.now += tick
            elapsed += tick

    def groups(self) -> set[tuple[int, int]]:
        """(generation, round) of every group some live node trains in."""
        return {(n.node.gen, n.node.membership.round) for n in self.live()
                if n.state == "member"}
