"""What the round protocol keeps in the rendezvous store, and where.

Keys of run `R` (values are JSON, sealed with the job key by `kv.SealedKV`):

    /elasticml/R/gen                   {"g": n}  the job generation now in use
    /elasticml/R/g<n>/terms            what every node of the job agrees on, and who began it
    /elasticml/R/g<n>/closed           the job finished: nodes still waiting leave
    /elasticml/R/g<n>/latest           newest decided round (a hint; only ever moves forward)
    /elasticml/R/g<n>/round/<r % 8>    round r: open with its joiners, or decided with its
                                       members in rank order
    /elasticml/R/g<n>/ending/<r % 8>   round r's group is regrouping: why, and who is coming back
    /elasticml/R/g<n>/beat/<node>      a node's beat counter, or `left`

Rounds and endings live in a ring of `RING` slots, each value naming its round number, so
the store holds a fixed number of keys however many rounds a job goes through, and a slow
node cannot bring back a round the others have moved past: creating round r is a
compare-and-set from the slot's exact previous content (round r - 8, or nothing).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

RING = 8


@dataclass(frozen=True)
class Card:
    """One node as the others see it in a round."""

    id: str
    """Unique per agent process (a new process of the same machine is a new node)."""
    name: str
    """What people call it: its `--local-addr` or host name."""
    addr: str
    """Where its workers can be reached; rank 0's is the process group's MASTER_ADDR."""
    port: int
    """A port free on `addr` when the card was written: MASTER_PORT if it gets rank 0."""
    pid: int

    def to_json(self) -> dict:
        return {"id": self.id, "name": self.name, "addr": self.addr, "port": self.port,
                "pid": self.pid}

    @classmethod
    def from_json(cls, data: dict) -> Card:
        return cls(str(data["id"]), str(data["name"]), str(data["addr"]), int(data["port"]),
                   int(data["pid"]))


@dataclass(frozen=True)
class Terms:
    """What every node of one job must share; a node that differs is refused."""

    training_hash: str
    nproc_per_node: int
    nnodes: str
    length: str = ""
    """How long the job trains (`steps:N` or `epochs:E`): every node must follow the
    same schedule, and a finished job of this length needs no second run."""

    def differences(self, other: Terms) -> list[str]:
        names = {"training_hash": "recipe (training hash)", "nproc_per_node": "nproc_per_node",
                 "nnodes": "nnodes", "length": "training length"}
        return [f"{label} {getattr(other, field)} here vs {getattr(self, field)} in the job"
                for field, label in names.items() if getattr(self, field) != getattr(other, field)]


@dataclass(frozen=True)
class Round:
    number: int
    open: bool
    cards: tuple[Card, ...]
    """Joiners in arrival order while open; members in rank order once decided."""
    raw: bytes = b""
    """The payload as read, for the next compare-and-set."""

    @property
    def ids(self) -> list[str]:
        return [card.id for card in self.cards]

    def encode(self) -> bytes:
        return dump({"r": self.number, "open": self.open,
                      "cards": [card.to_json() for card in self.cards]})

    @classmethod
    def decode(cls, raw: bytes) -> Round:
        data = json.loads(raw)
        return cls(int(data["r"]), bool(data["open"]),
                   tuple(Card.from_json(c) for c in data["cards"]), raw)


@dataclass(frozen=True)
class Ending:
    """Round `number`'s group has started to regroup."""

    number: int
    reason: str
    """join | lost | failure | hang | stop: what the first node to regroup saw."""
    coming: tuple[str, ...]
    """Members that said they are on their way to the next round."""
    raw: bytes = b""

    def encode(self) -> bytes:
        return dump({"r": self.number, "reason": self.reason, "coming": list(self.coming)})

    @classmethod
    def decode(cls, raw: bytes) -> Ending:
        data = json.loads(raw)
        return cls(int(data["r"]), str(data["reason"]), tuple(data["coming"]), raw)


class Keys:
    def __init__(self, run_id: str) -> None:
        self.run = f"/elasticml/{run_id}/"
        self.gen = self.run + "gen"

    def generation(self, gen: int) -> str:
        return f"{self.run}g{gen}/"

    def in_gen(self, gen: int, name: str) -> str:
        return self.generation(gen) + name

    def round(self, gen: int, number: int) -> str:
        return self.in_gen(gen, f"round/{number % RING}")

    def ending(self, gen: int, number: int) -> str:
        return self.in_gen(gen, f"ending/{number % RING}")

    def beat(self, gen: int, node_id: str) -> str:
        return self.in_gen(gen, f"beat/{node_id}")

    def fixed(self, gen: int) -> list[str]:
        """Every key of a generation except the beats."""
        names = ["terms", "closed", "latest"] + [f"round/{i}" for i in range(RING)] + [
            f"ending/{i}" for i in range(RING)]
        return [self.in_gen(gen, name) for name in names]


def dump(data: dict) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
