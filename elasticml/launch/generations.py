"""Which generation of a run id a node works in: a store may outlive the jobs that used it.

A standalone store or etcd keeps a run id's keys after its job. A job that finished leaves
`closed`; a job whose nodes all left or stopped beating is stale. Either way the next launch
of the run id starts a new generation (`/elasticml/<run>/g<n+1>/`) with clean keys, and the
old generation's keys go, instead of the new job tripping over the old one's state. A live
generation is joined, never replaced; one that is alive under other terms (another recipe,
another training length, another `nproc_per_node` or `nnodes`) or under another job key
refuses the newcomer, so two jobs never share rounds. A node started after its job finished
with the same recipe and length leaves: that job needs no second run.

The `gen` key holds `{"g": n}`, sealed with the job key of the job that started it. A value
sealed with another key is read without checking (`SealedKV.peek`) only to judge whether that
job still lives.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

from elasticml.launch.kv import SealedKV
from elasticml.launch.liveness import Liveness
from elasticml.launch.records import Card, Keys, Terms, dump

logger = logging.getLogger(__name__)


class JobFinished(Exception):
    """The job this node waited to join has finished."""


class Refused(Exception):
    """This node may not take part (another recipe, another job key, other terms)."""


@dataclass
class Generations:
    kv: SealedKV
    keys: Keys
    liveness: Liveness
    me: Card
    terms: Terms
    run_id: str
    begin_beating: Callable[[int], None]
    """Makes this node beat in a generation (so that others see it alive there)."""

    def enter_step(self) -> int | None:
        """One step towards the generation to join; its number once this node is in it."""
        raw = self.kv.inner.get(self.keys.gen)
        if raw is None:
            self.kv.compare_and_set(self.keys.gen, None, dump({"g": 0}))
            return None
        foreign = self.kv.signed_by_other_key(self.keys.gen)
        gen = int(json.loads(self.kv.peek(self.keys.gen))["g"])
        if foreign:
            verdict = self._verdict(gen, readable=False)
            if verdict == "alive":
                raise Refused(f"run {self.run_id!r} is running on this store under another job "
                              "key: give every node the same ELASTICML_JOB_KEY, or use another "
                              "--run-id")
            if verdict == "dead":
                self._next_generation(gen, raw)
            return None
        terms = self.kv.get(self.keys.in_gen(gen, "terms"))
        if self.kv.get(self.keys.in_gen(gen, "closed")) is not None:
            if terms is not None and self._same_job(json.loads(terms)):
                raise JobFinished(f"run {self.run_id!r} already finished ({self.terms.length}); "
                                  "raise the training length to train on, or use another "
                                  "--run-id")
            self._next_generation(gen, raw)
            return None
        if terms is None:
            self.begin_beating(gen)
            self.kv.compare_and_set(self.keys.in_gen(gen, "terms"), None, dump(
                {**self._terms_json(), "creator": self.me.id}))
            return None
        theirs = json.loads(terms)
        creator = theirs.pop("creator", None)
        if creator == self.me.id:
            return gen
        differences = Terms(**theirs).differences(self.terms)
        verdict = self._verdict(gen, readable=True, creator=creator)
        if differences and verdict == "alive":
            raise Refused(f"run {self.run_id!r} is running with other settings ("
                          f"{'; '.join(differences)}): start every node with the same recipe, "
                          "overrides and flags, or use another --run-id")
        if verdict == "dead":
            self._next_generation(gen, raw)
            return None
        if verdict == "alive" and not differences:
            self.begin_beating(gen)
            return gen
        return None

    def current(self) -> int | None:
        """The generation the run id is in now (read without checking the key)."""
        value = self.kv.peek(self.keys.gen)
        return None if value is None else int(json.loads(value)["g"])

    def _verdict(self, gen: int, readable: bool, creator: str | None = None) -> str | None:
        """alive | dead | None (not known yet) for a generation, from the beats of the nodes it
        names. A generation that names nobody but its creator waits on the creator."""
        known = set(self._nodes_of(gen, readable))
        if creator:
            known.add(creator)
        known.discard(self.me.id)
        if not known:
            return "alive"
        self.liveness.watch(known)
        for node_id in known:
            self.liveness.observe(node_id, self.kv.peek(self.keys.beat(gen, node_id)))
        if any(self.liveness.proven_alive(n) for n in known):
            return "alive"
        if not any(self.liveness.alive(n) for n in known):
            return "dead"
        return None

    def _nodes_of(self, gen: int, readable: bool) -> list[str]:
        read = self.kv.get if readable else self.kv.peek
        latest = read(self.keys.in_gen(gen, "latest"))
        number = int(latest) if latest else 0
        found: list[str] = []
        for r in (number, number + 1):
            value = read(self.keys.round(gen, r))
            if value:
                found += [c["id"] for c in json.loads(value)["cards"]]
        return found

    def _next_generation(self, gen: int, raw: bytes) -> None:
        """Replace generation `gen` (finished or stale) with a clean one; its keys go."""
        desired = self.kv.seal(dump({"g": gen + 1}))
        if not self.kv.inner.compare_and_set(self.keys.gen, raw, desired):
            return
        logger.info("run %s: generation %d is over; starting generation %d", self.run_id, gen,
                    gen + 1)
        known = self.liveness.watched()
        self.kv.delete(self.keys.fixed(gen) + [self.keys.beat(gen, n) for n in known])
        self.kv.delete_prefix(self.keys.generation(gen))
        self.liveness.forget(known)

    def _terms_json(self) -> dict:
        return {"training_hash": self.terms.training_hash,
                "nproc_per_node": self.terms.nproc_per_node, "nnodes": self.terms.nnodes,
                "length": self.terms.length}

    def _same_job(self, theirs: dict) -> bool:
        """A finished generation trained the same recipe for the same length as this node."""
        return (theirs.get("training_hash"), theirs.get("length")) == (
            self.terms.training_hash, self.terms.length)
