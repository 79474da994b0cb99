"""What went wrong and how the job recovered, folded from the event stream.

The report, TensorBoard and the live console all need the same answers, so they come from one
fold: `Incidents.fold(event)` returns the records an event completes.

* **Failure**: every `worker_failed` between two rendezvous rounds is one incident. When rank 1
  is killed, rank 0 fails too a moment later (its collective loses a peer); that is a
  consequence, not a second failure. The *cause* is the rank that failed first in substance:
  one with an injected fault, then one killed by a signal the agent did not send, then one
  whose own exception is not a lost-peer error; the other ranks are listed as `others`.
* **Recovery**: an incident (failure, hang, membership restart, relaunch) opens one; the first
  `resume` after it closes it. `downtime_s` runs from the incident (the injected fault or the
  failure the agent saw) to that resume; `steps_lost` is what the resumed rank reported.
* **Change**: a completed rendezvous whose world size differs from the previous one: a node
  joined (`join`) or left (`leave`); the first rendezvous is `start`.

Restarts are counted once per worker-group restart, however many agents (one per node) report
it: a `restart` counts only if none was counted since the last rendezvous round.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from elasticml.telemetry.events import Event

# Errors a rank raises because a *peer* went away: a symptom, never the cause.
LOST_PEER = re.compile(
    r"Connection closed by peer|Connection reset|Connection refused|Broken pipe|"
    r"Timed out waiting|connectFullMesh|NCCL.*(?:timeout|abort)|DistNetworkError|"
    r"DistStoreError|ProcessGroup.*(?:abort|timed out)|SIGTERM", re.IGNORECASE)
AGENT_SIGNALS = {"SIGTERM", "SIGINT", "SIGHUP"}
NO_MESSAGE = {None, "", "<NONE>", "<N/A>"}


@dataclass
class Failure:
    t: float
    rank: int | None
    node: str
    cause: str
    exitcode: int | None = None
    signal: str | None = None
    traceback: str | None = None
    step: int = 0
    injected: bool = False
    others: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Recovery:
    t: float
    cause: str
    """failure | hang | membership | relaunch"""
    step_before: int
    resumed_t: float | None = None
    resumed_step: int | None = None
    steps_lost: int | None = None
    source: str | None = None
    world_size: int | None = None

    @property
    def downtime_s(self) -> float | None:
        return None if self.resumed_t is None else max(0.0, self.resumed_t - self.t)

    def to_dict(self) -> dict:
        return {**asdict(self), "downtime_s": rounded(self.downtime_s)}


@dataclass
class Change:
    t: float
    world_size: int
    previous: int | None
    nodes: int | None
    kind: str
    """start | join | leave"""
    step: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


class Incidents:
    """Folds events (oldest first) into failures, recoveries, membership changes, restarts."""

    def __init__(self) -> None:
        self.failures: list[Failure] = []
        self.recoveries: list[Recovery] = []
        self.changes: list[Change] = []
        self.restarts = 0
        self.step = 0
        self.world_size: int | None = None
        self._group: Failure | None = None  # the failure of the current generation
        self._open: Recovery | None = None
        self._restart_counted = False
        self._faults: dict[int, Event] = {}
        self._launches = 0

    def fold(self, event: Event) -> list[Failure | Recovery | Change]:
        """Update from one event; returns the records this event created or completed."""
        handler = getattr(self, f"_on_{event.get('kind')}", None)
        return (handler(event) or []) if handler else []

    # --- worker progress ---------------------------------------------------------------

    def _on_step(self, event: Event) -> None:
        self.step = max(self.step, as_int(event.get("step")))

    def _on_fault(self, event: Event) -> None:
        if event.get("rank") is not None:
            self._faults[event["rank"]] = event

    def _on_resume(self, event: Event) -> list:
        recovery = self._open
        if recovery is None:
            return []
        if recovery.resumed_t is None:
            recovery.resumed_t = event["t"]
            recovery.resumed_step = as_int(event.get("step"))
            recovery.steps_lost = event.get("steps_lost")
            recovery.source = event.get("source")
            recovery.world_size = event.get("world_size")
            self.step = max(self.step, recovery.resumed_step)
            return [recovery]
        if event.get("rank") == 0:  # rank 0 speaks for the group when several report
            recovery.steps_lost = event.get("steps_lost", recovery.steps_lost)
        return []

    # --- agent observations ------------------------------------------------------------

    def _on_launch(self, event: Event) -> list:
        self._launches += 1
        self._faults.clear()
        if self._launches > 1:
            return self._open_recovery(event["t"], "relaunch")
        return []

    def _on_worker_failed(self, event: Event) -> list:
        cause, injected = _cause(event, self._faults.get(event.get("rank")))
        if self._group is not None:
            self._group.others.append({"rank": event.get("rank"), "cause": cause})
            if _outranks(event, injected, self._group):
                self._promote(event, cause, injected)
            return []
        fault = self._faults.get(event.get("rank")) if injected else None
        failure = Failure(t=fault["t"] if fault else event["t"], rank=event.get("rank"),
                          node=event.get("node", ""), cause=cause,
                          exitcode=event.get("exitcode"), signal=event.get("signal"),
                          traceback=event.get("traceback"), step=self.step, injected=injected)
        self._group = failure
        self.failures.append(failure)
        return [failure, *self._open_recovery(failure.t, "failure")]

    def _on_hang(self, event: Event) -> list:
        if self._group is not None:
            return []
        seconds = event.get("seconds")
        failure = Failure(t=event["t"], rank=event.get("rank"), node=event.get("node", ""),
                          cause=f"hang: no progress for {seconds} s", traceback=event.get("stacks")
                          if isinstance(event.get("stacks"), str) else None, step=self.step)
        self._group = failure
        self.failures.append(failure)
        return [failure, *self._open_recovery(failure.t, "hang")]

    def _on_restart(self, event: Event) -> list:
        if not self._restart_counted:
            self.restarts += 1
            self._restart_counted = True
        return self._open_recovery(event["t"], event.get("cause") or "failure")

    def _on_rendezvous(self, event: Event) -> list:
        self._group, self._restart_counted = None, False
        self._faults.clear()
        size = event.get("world_size")
        if size is None or size == self.world_size:
            return []
        previous, self.world_size = self.world_size, size
        kind = "start" if previous is None else ("join" if size > previous else "leave")
        change = Change(t=event["t"], world_size=size, previous=previous,
                        nodes=event.get("group_world_size"), kind=kind, step=self.step)
        self.changes.append(change)
        if self._open is not None and self._open.cause == "membership" and kind == "start":
            self._open.cause = "relaunch"
        return [change]

    # --- helpers -----------------------------------------------------------------------

    def _open_recovery(self, t: float, cause: str) -> list:
        if self._open is not None and self._open.resumed_t is None:
            return []
        self._open = Recovery(t=t, cause=cause, step_before=self.step)
        self.recoveries.append(self._open)
        return []

    def _promote(self, event: Event, cause: str, injected: bool) -> None:
        group = self._group
        group.others = [o for o in group.others if o["rank"] != event.get("rank")]
        group.others.insert(0, {"rank": group.rank, "cause": group.cause})
        group.rank, group.cause, group.injected = event.get("rank"), cause, injected
        group.exitcode, group.signal = event.get("exitcode"), event.get("signal")
        group.traceback, group.node = event.get("traceback"), event.get("node", "")
        if injected:
            group.t = min(group.t, self._faults[event["rank"]]["t"])
            if self._open is not None and self._open.resumed_t is None:
                self._open.t = min(self._open.t, group.t)

    @property
    def downtime_s(self) -> float:
        return sum(r.downtime_s or 0.0 for r in self.recoveries if r.cause != "relaunch")

    @property
    def steps_lost(self) -> int:
        return sum(r.steps_lost or 0 for r in self.recoveries)


def _cause(event: Event, fault: Event | None) -> tuple[str, bool]:
    """The rank's own words for why it ended, and whether the failure was injected."""
    error, sig, code = event.get("error"), event.get("signal"), event.get("exitcode")
    if fault is not None:
        return f"injected fault: {fault.get('fault', 'kill')} at step {fault.get('step')}" + (
            f" ({sig})" if sig else ""), True
    if error not in NO_MESSAGE:
        return str(error), False
    if sig:
        return f"killed by {sig}", False
    return f"exited with code {code}", False


def _rank_of(injected: bool, event_or_failure) -> int:
    """Lower is more likely the root cause."""
    if injected:
        return 0
    sig = getattr(event_or_failure, "signal", None) if isinstance(event_or_failure, Failure) \
        else event_or_failure.get("signal")
    cause = event_or_failure.cause if isinstance(event_or_failure, Failure) \
        else str(event_or_failure.get("error"))
    if sig and sig not in AGENT_SIGNALS:
        return 1
    if cause not in NO_MESSAGE and not LOST_PEER.search(cause) and not sig:
        return 2
    return 3


def _outranks(event: Event, injected: bool, group: Failure) -> bool:
    if group.cause.startswith("hang:"):
        return False
    return _rank_of(injected, event) < _rank_of(group.injected, group)


def as_int(value) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
