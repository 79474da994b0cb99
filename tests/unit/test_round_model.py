"""Model-based test of the round protocol: any interleaving of node steps, beats, clock moves,
new nodes, graceful leaves and crashes between any two store operations (the crashing
write landing or not).

Safety, checked after every step: every member of a round sees the same members (one
decision per round), no node twice, between min and max members. Liveness, checked when the
cluster is left alone (every node beats on time and no more crashes): the live nodes form
exactly one group of min(live, max) members, the rest wait as spares, and the group then
stays put (no regroup without a reason: no livelock).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from elasticml.launch.rounds import Timings
from tests.roundsim import Sim

NODES = st.integers(min_value=0, max_value=5)
TIMINGS = Timings(join_timeout=10_000, group_timeout=6.0)
"""The defaults but a shorter wait for members that said they are coming back, so that the
settling below is short."""
SETTLE_S = 15.0
"""Longer than every timing of the protocol."""


class RoundProtocol(RuleBasedStateMachine):
    min_nodes, max_nodes = 1, 2

    @initialize()
    def cluster(self) -> None:
        self.sim = Sim(self.min_nodes, self.max_nodes, TIMINGS)
        self.sim.add_node()

    def _node(self, index: int):
        return self.sim.nodes[index % len(self.sim.nodes)]

    @rule()
    def add_node(self) -> None:
        if len(self.sim.nodes) < 6:
            self.sim.add_node()

    @rule(index=NODES, times=st.integers(1, 4))
    def step(self, index: int, times: int) -> None:
        for _ in range(times):
            self.sim.step(self._node(index))

    @rule(index=NODES)
    def beat(self, index: int) -> None:
        self.sim.beat(self._node(index))

    @rule(seconds=st.sampled_from([0.03, 0.3, 0.6, 3.5]))
    def time_passes(self, seconds: float) -> None:
        self.sim.clock.now += seconds

    @rule(seconds=st.sampled_from([0.5, 2.0, 5.0]))
    def everyone_works(self, seconds: float) -> None:
        self.sim.run(seconds)

    @rule(index=NODES, budget=st.integers(0, 8), lands=st.booleans())
    def crash_within(self, index: int, budget: int, lands: bool) -> None:
        """The node dies after `budget` more store operations."""
        node = self._node(index)
        node.budget, node.last_lands = budget, lands

    @rule(index=NODES)
    def leaves(self, index: int) -> None:
        """SIGTERM, Ctrl-C or an error: the agent says it left and goes."""
        self.sim.leave(self._node(index))

    @rule()
    def settle(self) -> None:
        sim = self.sim
        for node in sim.nodes:
            node.budget = None
        sim.run(SETTLE_S)
        live = sim.live()
        assert not [n for n in sim.nodes if n.state == "refused"], "a node of the job refused"
        if len(live) < self.min_nodes:
            return
        groups = sim.groups()
        assert len(groups) == 1, f"{len(live)} live nodes settled into groups {groups}"
        members = [n for n in live if n.state == "member"]
        assert len(members) == min(len(live), self.max_nodes), (
            f"{len(members)} members of {len(live)} live nodes (max {self.max_nodes})")
        regroups = [n.regroups for n in live]
        sim.run(10.0)
        assert [n.regroups for n in live] == regroups, "the settled group kept regrouping"
        assert sim.groups() == groups

    @invariant()
    def one_decision_per_round(self) -> None:
        for node in self.sim.nodes:
            if node.state == "member":
                mine = node.node.membership
                assert self.sim.decisions[(node.node.gen, mine.round)] == tuple(mine.ids)


class RoundProtocolTwoToThree(RoundProtocol):
    min_nodes, max_nodes = 2, 3


EXAMPLES = int(os.environ.get("ELASTICML_MODEL_EXAMPLES", "60"))
"""Interleavings per machine; raise it for a deeper search (e.g. 2000 before a release)."""
MODEL = settings(max_examples=EXAMPLES, stateful_step_count=40, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow])
TestRoundProtocol = RoundProtocol.TestCase
TestRoundProtocol.settings = MODEL
TestRoundProtocolTwoToThree = RoundProtocolTwoToThree.TestCase
TestRoundProtocolTwoToThree.settings = MODEL
