"""The event log: what every process of a run says happened, as append-only JSON lines.

One file per process (`events/<role>-<host>-<pid>.jsonl`), written with one `write()` per line
on an `O_APPEND` descriptor, so a SIGKILL loses at most the line being written and never
corrupts the lines before it. Every consumer — live console, TensorBoard, `report`, `eval` —
reads these files; none reads another component's private state.

Every event has `t` (unix time), `kind`, `role` (agent | worker), `node` (host name), `pid`.
Kinds and their own fields:

agent:  launch {nnodes, nproc_per_node, backend, endpoint, run_id}
        rendezvous {round, seconds, group_rank, group_world_size, world_size,
                    previous_world_size, members: [{node, pid}] by group rank | null}
        membership {world_size, previous_world_size, nodes, joined: [node], left: [node]}
                    (after a round whose world size differs from the previous round's)
        workers_started {restart_count, pids}
        worker_failed {rank, local_rank, node, exitcode, signal, error, traceback}
        hang {rank, local_rank, pid, node, seconds, step, stacks, waiting_on_peers, killed}
                    (`stacks` is the file holding the worker's Python stacks)
        restart {cause: failure | hang | membership, restart_count,
                 failure/hang: failed_rank, local_rank, node, exitcode, signal, error
                 membership: reason (join | lost | failure | hang | stop: what the first
                 node to regroup saw)}
        agent_done {status: succeeded | failed | stopped | error | not_needed, seconds}
                    (`not_needed`: the job finished while this node waited as a spare)
worker: start {rank, local_rank, world_size, restart_count, step}
        resume {step, source: checkpoint | peer | fresh, source_rank, steps_lost, seconds}
        recovered {step, gap_s, steps_lost, last_step_before}
                    (local rank 0, first step after a resume on a node that trained before:
                    `gap_s` is the time since this node last completed a step: the downtime)
        fault {fault: kill | hang, step, rank}
        step {step, epoch, loss, lr, samples, samples_per_s, world_size}
        eval {step, split, metrics, early_stopping, weights_step}
                    (`early_stopping` {metric, best_value, best_step, stale, patience}: a
                    validation during training that early stopping counted; `weights_step`:
                    test and train at the end, the step of the model scored, which after an
                    early stop is that of `best.pt`)
        early_stop {step, metric, mode: max | min, min_delta, patience, best_value, best_step,
                    message}   (rank 0, once: validation stopped improving; training ends
                    as completed)
        checkpoint {step, path, seconds, stall_s, write_s, error,
                    reason: periodic | failure | signal | final | best}
                    (`best`: `best.pt`, written on every node by its local rank 0)
                    (emitted once the file is renamed and fsynced, from the writer thread for
                    a background save; `seconds` = `stall_s`, the pause of training;
                    `error`: the exception that led to a `failure` save)
        error {rank, message, traceback}   (traceback null for a one-line refusal: UserError)
        compiled {seconds}   (first step with trainer.compile: compile time, reported apart)
        warning {message}   (e.g. a corrupt checkpoint skipped)
        done {step, metrics, reason: finished | early_stop, weights_step}
                    (`metrics` were scored with the model of `weights_step`)
`node` is the agent's `local_addr` where one is set (several nodes may share a host name).
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

Event = dict[str, Any]


class EventLog:
    """Appends events for one process. Safe against SIGKILL between lines."""

    def __init__(self, events_dir: str | Path, role: str, **fixed: Any) -> None:
        folder = Path(events_dir)
        folder.mkdir(parents=True, exist_ok=True)
        self.node = socket.gethostname()
        self.path = folder / f"{role}-{self.node}-{os.getpid()}.jsonl"
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._fixed = {"role": role, "node": self.node, "pid": os.getpid(), **fixed}

    def emit(self, kind: str, **fields: Any) -> Event:
        event = {"t": round(time.time(), 4), "kind": kind, **self._fixed, **fields}
        os.write(self._fd, (json.dumps(event, default=str) + "\n").encode())
        return event

    def set(self, **fixed: Any) -> None:
        """Fields added to every later event (rank and world size change at restarts)."""
        self._fixed.update(fixed)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def read_events(events_dir: str | Path) -> list[Event]:
    """Every complete event of a run, oldest first; a line cut off by a kill is skipped."""
    events = [event for path in _files(events_dir) for event in _parse(path.read_bytes())]
    events.sort(key=lambda e: e.get("t", 0.0))
    return events


class EventTail:
    """Follows a run's event files as they grow (the live console and TensorBoard use it)."""

    def __init__(self, events_dir: str | Path) -> None:
        self.folder = Path(events_dir)
        self._offsets: dict[Path, int] = {}

    def poll(self) -> list[Event]:
        fresh: list[Event] = []
        for path in _files(self.folder):
            offset = self._offsets.get(path, 0)
            with path.open("rb") as handle:
                handle.seek(offset)
                chunk = handle.read()
            complete = chunk.rfind(b"\n") + 1
            self._offsets[path] = offset + complete
            fresh.extend(_parse(chunk[:complete]))
        fresh.sort(key=lambda e: e.get("t", 0.0))
        return fresh


def _files(events_dir: str | Path) -> list[Path]:
    folder = Path(events_dir)
    return sorted(folder.glob("*.jsonl")) if folder.is_dir() else []


def _parse(data: bytes) -> Iterator[Event]:
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue  # the tail of a line cut off by SIGKILL
        if isinstance(event, dict) and "kind" in event:
            yield event
