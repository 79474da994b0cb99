"""The hang watchdog the agent runs between its checks on the workers (DESIGN decision 9).

torch elastic only sees workers that exit; a worker stuck in a deadlock looks healthy to it
forever. Each worker rewrites its progress file with its step after every step
(`train/progress.py`). The watchdog reads the step and notes, on the agent's own monotonic
clock, when it last changed: file modification times are not used, so a run dir on NFS with
a skewed clock cannot make a worker look hung. A worker whose step has not moved for
`elastic.hang_timeout` is stale: the watchdog asks it for its Python stacks (SIGUSR1,
written by `faulthandler` into `logs/stacks-*.txt`) and reads them.

* A worker stuck in its own code (or its data loading) is the culprit: it is SIGKILLed. Its
  peers, waiting for it in a collective, see the connection close, save their last completed
  step and exit; torch restarts the group as for any crash. A hang loses no steps wherever a
  replica is healthy.
* A worker whose main thread is inside torch's distributed code (a collective, DDP's
  gradient hooks) is waiting for a peer, perhaps one on another node that this node cannot
  see. It is never killed for that: its collective gives up after
  `elastic.collective_timeout`, and the worker then saves and exits by itself. Only if it is
  still stuck `2 x collective_timeout` after it was found stale (something inside torch that
  has no timeout) is it killed too.

A worker is watched from its first completed step in the current attempt until its training
loop ends: start-up (imports, process group, state agreement) and the final evaluation are
bounded by the rendezvous and collective timeouts instead. Validations and checkpoints in
between count as progress when they end, so `hang_timeout` must exceed the longest of a step,
a validation and a checkpoint write.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from elasticml.train.progress import STACKS_SIGNAL, progress_path, read_step, stacks_path

STACKS_GRACE_S = 0.5
WAITING_FRAMES = (f"{os.sep}torch{os.sep}distributed{os.sep}",
                  f"{os.sep}torch{os.sep}nn{os.sep}parallel{os.sep}",
                  f"{os.sep}torch{os.sep}autograd{os.sep}")
"""Where a main thread blocked on a peer sits: collectives, DDP, the backward pass that runs
DDP's all-reduce hooks."""


@dataclass(frozen=True)
class Hung:
    rank: int
    local_rank: int
    pid: int
    seconds: float
    """Time since the worker last completed a step."""
    step: int | None
    stacks: str
    """File with the worker's stacks (appended to at every dump)."""
    waiting_on_peers: bool
    """Its main thread was inside torch's distributed code: blocked by another worker."""
    killed: bool


@dataclass
class _Watch:
    step: int | None
    since: float
    """Agent's monotonic time when `step` was first read."""
    active: bool
    """The worker completed a step in this attempt: it is watched."""
    next_look: float | None = None
    """Found waiting on a peer: not judged again before this time."""


class HangWatchdog:
    def __init__(self, logs: Path, hang_timeout: float, collective_timeout: float = 30.0,
                 clock=time.monotonic) -> None:
        self.logs, self.hang_timeout = logs, hang_timeout
        self.collective_timeout, self.clock = collective_timeout, clock
        self._watches: dict[int, _Watch] = {}

    def reset(self) -> None:
        """A new attempt began: progress from earlier attempts does not count."""
        self._watches = {}

    def check(self, workers) -> list[Hung]:
        """Find stale workers, dump their stacks and SIGKILL the culprits; report them all."""
        stale = [s for s in (self._inspect(w) for w in workers) if s is not None]
        if not stale:
            return []
        dumps = _dump_stacks(stale)
        now, found = self.clock(), []
        for s in stale:
            waiting = _waiting_on_peers(dumps[s.pid])
            watch = self._watches[s.local_rank]
            deadline = watch.since + self.hang_timeout + 2 * self.collective_timeout
            killed = not waiting or now >= deadline
            if killed:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(s.pid, signal.SIGKILL)
            watch.next_look = deadline
            found.append(Hung(s.rank, s.local_rank, s.pid, s.seconds, s.step, str(s.stacks),
                              waiting, killed))
        return found

    def _inspect(self, worker) -> _Stale | None:
        if worker.id is None:
            return None
        path = progress_path(self.logs, os.getpid(), worker.local_rank)
        try:
            step, finished = read_step(path)
        except (OSError, ValueError):
            step, finished = None, False  # no step completed yet
        now = self.clock()
        watch = self._watches.get(worker.local_rank)
        if watch is None or step != watch.step:
            # The first look in this attempt only notes where the worker is (that step may
            # be an earlier attempt's); from its next completed step on it is watched.
            self._watches[worker.local_rank] = _Watch(step, now, active=watch is not None)
            return None
        if not watch.active or finished:
            return None
        idle = now - watch.since
        if idle < self.hang_timeout:
            return None
        if watch.next_look is not None and now < watch.next_look:
            return None  # waiting on a peer: its collective gets the time to give up
        return _Stale(worker.global_rank, worker.local_rank, int(worker.id), round(idle, 3),
                      step, stacks_path(self.logs, os.getpid(), worker.local_rank))


@dataclass(frozen=True)
class _Stale:
    rank: int
    local_rank: int
    pid: int
    seconds: float
    step: int | None
    stacks: Path


def _dump_stacks(stale: list[_Stale]) -> dict[int, str]:
    """Each worker's fresh stack dump (the text its file gained)."""
    sizes = {}
    for s in stale:
        sizes[s.pid] = s.stacks.stat().st_size if s.stacks.exists() else 0
        with contextlib.suppress(ProcessLookupError):
            os.kill(s.pid, STACKS_SIGNAL)
    time.sleep(STACKS_GRACE_S)
    dumps = {}
    for s in stale:
        try:
            with open(s.stacks, "rb") as handle:
                handle.seek(sizes[s.pid])
                dumps[s.pid] = handle.read().decode(errors="replace")
        except OSError:
            dumps[s.pid] = ""
    return dumps


def _waiting_on_peers(dump: str) -> bool:
    """True when the innermost frame of the dumping (main) thread is torch's distributed code
    (or the backward pass, where DDP's all-reduce hooks run)."""
    block = dump.split("Current thread", 1)[-1]
    frames = [line.strip() for line in block.splitlines() if line.strip().startswith("File ")]
    return bool(frames) and any(part in frames[0] for part in WAITING_FRAMES)
