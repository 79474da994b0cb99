"""Who trains together: membership in numbered rounds, each decided by one compare-and-set.

A job's nodes meet in rounds kept in the rendezvous store (`records.py` has the layout). A
node appends its card to the open round; any member may decide the round, by replacing the
open round's exact content with the list of members in rank order. That one
compare-and-set is the decision: there is never a half-decided round, so a node that dies
between any two store operations leaves nothing the others must repair. Every step below is
one bounded pass of non-blocking reads and at most one write, so the same code runs in the
agent (looping with short sleeps) and in the model-based tests (stepping nodes in any order,
crashing them between any two operations).

When a round may be decided, for open round r with the members M of round r - 1:
* no member of M has come back and some of M are alive: a group is training. Newcomers
  wait for it to take them in (it does so at its next monitor tick while it has room);
  when it is full they wait as spares.
* no group (the job's start, or every member of M lost): once `min_nodes` live nodes are
  in, wait `last_call` for more, then start (at once with `max_nodes`).
* members of M are coming back (a failure, a lost node, a join): wait for those who said
  they are coming, up to `group_timeout`, and `regroup_wait` for the silent ones (lost or
  cut off); then members = the returning ones, in their old rank order, plus newcomers up
  to `max_nodes`. The rest stay in the next round: spares.
Liveness comes from beats (`liveness.py`): a node that joined and died is left out, or, if
the round was decided with it, its peers see it lost and regroup within `node_timeout`.

A member learns that its group must regroup through `watch()`, which torch's agent calls at
every monitor tick (as `num_nodes_waiting`): a member lost, a newcomer the group has room
for, a peer already regrouping, or rounds decided without it. The first member to see it
writes the round's *ending* with the reason, so that a peer whose workers then fail can
tell a planned regroup (a join) from a failure.

Generations (`generations.py`): a store may outlive a job; the next launch of the run id
starts a clean generation of its keys once the last job is over.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from elasticml.launch.generations import Generations, JobFinished
from elasticml.launch.kv import SealedKV
from elasticml.launch.liveness import LEFT, Liveness
from elasticml.launch.records import Card, Ending, Keys, Round, Terms

logger = logging.getLogger(__name__)

POLL_S = 0.03
"""How often a node in an open round looks at the store."""


@dataclass(frozen=True)
class Timings:
    join_timeout: float = 600.0
    """No round formed within this many seconds: give up."""
    last_call: float = 0.5
    """With no group training: wait this long for more nodes once `min_nodes` are in."""
    regroup_wait: float = 0.3
    """Once members come back, wait this long for members that said nothing."""
    group_timeout: float = 60.0
    """Once members come back, wait up to this long for members that said they are coming
    (they are stopping their workers, which save first)."""
    node_timeout: float = 3.0
    """A node whose beat has not moved for this long is lost."""
    beat_interval: float = 0.5


class NoQuorum(Exception):
    """Fewer than `min_nodes` nodes within `join_timeout`."""


@dataclass(frozen=True)
class Membership:
    round: int
    rank: int
    cards: tuple[Card, ...]

    @property
    def world_size(self) -> int:
        return len(self.cards)

    @property
    def ids(self) -> list[str]:
        return [card.id for card in self.cards]

    @property
    def master(self) -> Card:
        return self.cards[0]


@dataclass
class _Joining:
    number: int
    started: float
    card: Card
    quorum_at: float | None = None
    back_at: float | None = None


@dataclass
class RoundNode:
    """One node's side of the protocol; not thread-safe except `beat()` next to the rest."""

    kv: SealedKV
    run_id: str
    terms: Terms
    me: Card
    """This node's card; its port is replaced by a fresh free one at every join."""
    min_nodes: int
    max_nodes: int
    timings: Timings = field(default_factory=Timings)
    clock: Callable[[], float] = time.monotonic
    free_port: Callable[[], int] = lambda: 0
    beat_kv: SealedKV | None = None
    """The connection `beat()` uses (another thread's); default: `kv`."""
    joined: Callable[[], None] | None = None
    """Called once this node's card is in an open round (fault injection hooks in here)."""

    def __post_init__(self) -> None:
        if not 1 <= self.min_nodes <= self.max_nodes:
            raise ValueError(f"need 1 <= min_nodes <= max_nodes, got {self.min_nodes}:"
                             f"{self.max_nodes}")
        self.keys = Keys(self.run_id)
        self.liveness = Liveness(self.timings.node_timeout, self.clock)
        self.gen: int | None = None
        self.membership: Membership | None = None
        self._joining: _Joining | None = None
        self._beats = 0
        self._beat_gen: int | None = None
        self._left = False
        self._gen_checked = float("-inf")
        self.generations = Generations(self.kv, self.keys, self.liveness, self.me, self.terms,
                                       self.run_id, self._beat_in)

    # --- rendezvous -----------------------------------------------------------------------

    def rendezvous_step(self) -> Membership | None:
        """One bounded step of finding the job's generation and joining its open round; the
        membership once a round includes this node.

        Raises `Refused` (another recipe or job key runs under this run id), `JobFinished`
        (the job closed while this node waited) and `NoQuorum` (`join_timeout` passed)."""
        if self.gen is None:
            self.gen = self.generations.enter_step()
            return None
        if self._generation_moved():
            self._forsake_generation()
            return None
        return self._join_step()

    def _generation_moved(self) -> bool:
        """Whether the run went on to another generation without this node (a newcomer took
        this one for dead: its nodes were silent for `node_timeout`). Checked every
        `node_timeout / 3` seconds."""
        now = self.clock()
        if now - self._gen_checked < self.timings.node_timeout / 3:
            return False
        self._gen_checked = now
        return self.generations.current() != self.gen

    def _forsake_generation(self) -> None:
        logger.warning("run %s: generation %s was replaced; joining the current one",
                       self.run_id, self.gen)
        self.gen = self.membership = self._joining = None
        self._beat_gen = None

    # --- rounds ---------------------------------------------------------------------------

    def _join_step(self) -> Membership | None:
        gen, now = self._in_generation(), self.clock()
        joining = self._joining
        if joining is None:
            card = Card(self.me.id, self.me.name, self.me.addr, self.free_port(), self.me.pid)
            joining = self._joining = _Joining(self._first_round_to_join(), now, card)
            self._forget_the_departed()
        if self._get(self.keys.in_gen(gen, "closed")) is not None:
            raise JobFinished(f"run {self.run_id!r} has finished")
        if now - joining.started > self.timings.join_timeout:
            raise NoQuorum(f"run {self.run_id!r}: fewer than {self.min_nodes} nodes joined "
                           f"within {self.timings.join_timeout:g} s")
        slot = self._slot(self.keys.round(gen, joining.number), Round.decode)
        found = slot if isinstance(slot, Round) and slot.number == joining.number else None
        if isinstance(slot, Round) and slot.number > joining.number:
            self._from_latest(joining)  # this node fell far behind
            return None
        if found is None:
            self._open(gen, joining, slot)
            return None
        if found.open:
            if joining.card.id not in found.ids:
                grown = Round(found.number, True, (*found.cards, joining.card))
                if self.kv.compare_and_set(self.keys.round(gen, found.number), found.raw,
                                           grown.encode()) and self.joined is not None:
                    self.joined()
                return None
            members = self._ready(gen, joining, found, now)
            if members is not None:
                decided = Round(found.number, False, tuple(members))
                if self.kv.compare_and_set(self.keys.round(gen, found.number), found.raw,
                                           decided.encode()):
                    self._decided(gen, found.number, members)
            return None
        if joining.card.id in found.ids:
            self._joining = None
            self.membership = Membership(found.number, found.ids.index(joining.card.id),
                                         found.cards)
            self.liveness.watch(found.ids)
            return self.membership
        joining.number += 1  # decided without this node: late, or a spare
        joining.quorum_at = joining.back_at = None
        return None

    def _open(self, gen: int, joining: _Joining, previous_content) -> None:
        """Open round `joining.number` in a slot that holds an older round (or nothing), but
        only once the round before it is decided."""
        if joining.number > 0:
            before = self._round(gen, joining.number - 1)
            if before is None or before.open:
                self._from_latest(joining)  # out of date
                return
        raw = previous_content.raw if previous_content is not None else None
        opened = Round(joining.number, True, (joining.card,))
        if self.kv.compare_and_set(self.keys.round(gen, joining.number), raw,
                                   opened.encode()) and self.joined is not None:
            self.joined()

    def _first_round_to_join(self) -> int:
        """After `latest` (a hint: it lags when a decider died before moving it) and after the
        round this node was last a member of: never back into the round it just left."""
        left = self.membership.round if self.membership is not None else -1
        return max(self._latest(), left) + 1

    def _from_latest(self, joining: _Joining) -> None:
        joining.number = self._first_round_to_join()
        joining.quorum_at = joining.back_at = None

    def _forget_the_departed(self) -> None:
        """Stop watching nodes that are gone and belong to no round this node is in."""
        mine = set(self.membership.ids) if self.membership else set()
        gone = [n for n in self.liveness.watched() if n not in mine and not self._alive(n)]
        self.liveness.forget(gone)

    def _ready(self, gen: int, joining: _Joining, rnd: Round, now: float) -> list[Card] | None:
        """The members of `rnd` if it may be decided now (rules in the module docstring)."""
        previous = self._round(gen, rnd.number - 1) if rnd.number > 0 else None
        group = list(previous.cards) if previous is not None and not previous.open else []
        ending = self._ending(gen, rnd.number - 1)
        coming = set(ending.coming) if ending else set()
        self.liveness.watch(rnd.ids + [c.id for c in group])
        present = [c for c in rnd.cards if self._alive(c.id)]
        if len(present) < self.min_nodes:
            joining.quorum_at = None
            return None
        old = {c.id: rank for rank, c in enumerate(group)}
        back = sorted((c for c in present if c.id in old), key=lambda c: old[c.id])
        new = [c for c in present if c.id not in old]
        away = [c for c in group if c.id not in rnd.ids and self._alive(c.id)]
        if not back:
            if away:
                return None  # a group trains: it takes newcomers in at its next tick
            joining.quorum_at = joining.quorum_at or now
            if len(present) < self.max_nodes and now - joining.quorum_at < \
                    self.timings.last_call:
                return None
            return present[:self.max_nodes]
        joining.back_at = joining.back_at or now
        waited = now - joining.back_at
        for card in away:
            limit = self.timings.group_timeout if card.id in coming else \
                self.timings.regroup_wait
            if waited < limit:
                return None
        return (back + new)[:self.max_nodes]

    def _decided(self, gen: int, number: int, members: list[Card]) -> None:
        """Bookkeeping of the node whose decision won: move `latest`, drop the beats of
        members of the round before that are gone."""
        latest_key = self.keys.in_gen(gen, "latest")
        current = self._get(latest_key)
        if current is None or int(current) < number:
            self.kv.compare_and_set(latest_key, current, str(number).encode())
        previous = self._round(gen, number - 1) if number > 0 else None
        if previous is None:
            return
        staying = {c.id for c in members}
        gone = [c.id for c in previous.cards if c.id not in staying and not self._alive(c.id)]
        if gone:
            self.kv.delete([self.keys.beat(gen, node_id) for node_id in gone])

    # --- while the group trains -----------------------------------------------------------

    def watch(self) -> int:
        """How many nodes wait for this node's group to regroup (torch's `num_nodes_waiting`):
        positive when the group must regroup now."""
        if self.membership is None or self.gen is None:
            return 0
        gen, mine = self.gen, self.membership
        if self._generation_moved():
            self._forsake_generation()
            return 1
        if self._ending(gen, mine.round) is not None:
            return 1
        lost = [c for c in mine.cards if c.id != self.me.id and not self._alive(c.id)]
        if lost:
            self.end_round("lost", coming=False)
            return 1
        slot = self._slot(self.keys.round(gen, mine.round + 1), Round.decode)
        if not isinstance(slot, Round) or slot.number < mine.round + 1:
            latest = self._latest()
            return 1 if latest > mine.round else 0
        if slot.number > mine.round + 1 or not slot.open:
            return 1  # rounds were decided without this node
        newcomers = [c for c in slot.cards if c.id not in mine.ids]
        self.liveness.watch(c.id for c in newcomers)
        room = self.max_nodes - mine.world_size
        admissible = min(room, sum(1 for c in newcomers if self._alive(c.id)))
        if admissible > 0:
            self.end_round("join", coming=False)
            return admissible
        return 0

    def end_round(self, reason: str, coming: bool) -> str:
        """Record that this node's round is ending (and, with `coming`, that this node is on
        its way to the next one). Returns the round's reason: the first node's."""
        if self.membership is None or self.gen is None:
            return reason
        key = self.keys.ending(self.gen, self.membership.round)
        for _ in range(50):
            slot = self._slot(key, Ending.decode)
            current = slot if isinstance(slot, Ending) and \
                slot.number == self.membership.round else None
            if current is not None and (not coming or self.me.id in current.coming):
                return current.reason
            if current is None:
                desired = Ending(self.membership.round, reason, (self.me.id,) if coming else ())
                expected = slot.raw if isinstance(slot, Ending) else None
            else:
                desired = Ending(current.number, current.reason, (*current.coming, self.me.id))
                expected = current.raw
            if self.kv.compare_and_set(key, expected, desired.encode()):
                return desired.reason
        return reason

    def ending_reason(self) -> str | None:
        """Why this node's round is ending, if it is (what the first node to regroup saw)."""
        if self.membership is None or self.gen is None:
            return None
        ending = self._ending(self.gen, self.membership.round)
        return ending.reason if ending else None

    # --- beats and the end ----------------------------------------------------------------

    def beat(self) -> None:
        """Move this node's beat and read the beats of the nodes it watches."""
        gen = self._beat_gen
        if gen is None or self._left:
            return
        kv = self.beat_kv or self.kv
        self._beats += 1
        kv.set(self.keys.beat(gen, self.me.id), str(self._beats).encode())
        for node_id in self.liveness.watched():
            if node_id != self.me.id:
                self.liveness.observe(node_id, kv.peek(self.keys.beat(gen, node_id)))

    def finish(self) -> None:
        """The job is complete: nodes still waiting to join may leave; then leave."""
        if self.gen is not None:
            self.kv.set(self.keys.in_gen(self.gen, "closed"), b"1")
        self.leave()

    def leave(self) -> None:
        """This node goes (any reason but a crash): the others need not wait for its beat."""
        gen, self._left = self._beat_gen, True
        if gen is not None:
            (self.beat_kv or self.kv).set(self.keys.beat(gen, self.me.id), LEFT)

    def others_gone(self) -> bool:
        """Every node this node knows of has left or stopped beating."""
        return not any(self._alive(n) for n in self.liveness.watched() if n != self.me.id)

    # --- reading --------------------------------------------------------------------------

    def _beat_in(self, gen: int) -> None:
        if self._beat_gen != gen:
            self._beat_gen = gen
            self.beat()

    def _in_generation(self) -> int:
        if self.gen is None:
            raise RuntimeError("this node has not entered a generation yet")
        self._beat_in(self.gen)
        return self.gen

    def _alive(self, node_id: str) -> bool:
        return node_id == self.me.id or self.liveness.alive(node_id)

    def _latest(self) -> int:
        value = self._get(self.keys.in_gen(self._in_generation(), "latest"))
        return int(value) if value is not None else -1

    def _round(self, gen: int, number: int) -> Round | None:
        slot = self._slot(self.keys.round(gen, number), Round.decode)
        return slot if isinstance(slot, Round) and slot.number == number else None

    def _ending(self, gen: int, number: int) -> Ending | None:
        slot = self._slot(self.keys.ending(gen, number), Ending.decode)
        return slot if isinstance(slot, Ending) and slot.number == number else None

    def _slot(self, key: str, decode):
        value = self._get(key)
        return None if value is None else decode(value)

    def _get(self, key: str) -> bytes | None:
        return self.kv.get(key)
