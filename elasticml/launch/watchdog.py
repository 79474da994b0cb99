"""The hang watchdog the agent runs between its checks on the workers (DESIGN decision 9).

torch elastic only sees workers that exit; a worker stuck in a collective or a deadlock looks
healthy to it forever. Each worker rewrites its progress file after every step
(`train/progress.py`), so the file's age is the time since the worker last made progress.
A worker whose file is older than `elastic.hang_timeout` is stale: the watchdog asks every
stale worker for its Python stacks (SIGUSR1, written by `faulthandler` into
`logs/stacks-*.txt`), gives them a moment to write, and reads them. A worker whose main thread
is inside torch (a collective, DDP's gradient sync) is most likely waiting for a peer; one
stuck in its own code is the culprit. The culprits are SIGKILLed; the peers waiting on them
then see a closed connection, save their last completed step and exit, so a hang loses no
steps. When every stale worker is waiting inside torch (a collective stuck everywhere), all
are killed. torch's own monitoring then sees failed workers and restarts the group as for
any crash.

A worker is watched from its first completed step in the current attempt until its training
loop ends: start-up (imports, process group, state agreement) and the final evaluation are
bounded by the rendezvous and collective timeouts instead. Validations and checkpoints in
between count as progress when they end, so `hang_timeout` must exceed the longest of a step,
a validation and a checkpoint write.
This is an equivalent of torch's file-based timer watchdog that needs no change to the
training code and also catches a worker stuck inside a C++ collective.
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
    """Its main thread was inside torch: probably blocked by another worker."""
    killed: bool


class HangWatchdog:
    def __init__(self, logs: Path, hang_timeout: float) -> None:
        self.logs, self.hang_timeout = logs, hang_timeout
        self.started = time.time()
        self._quiet_until = 0.0

    def reset(self) -> None:
        """A new attempt began: progress from earlier attempts does not count."""
        self.started = time.time()
        self._quiet_until = 0.0

    def check(self, workers) -> list[Hung]:
        """Find stale workers, dump their stacks and SIGKILL the culprits; report them all."""
        if time.time() < self._quiet_until:
            return []
        stale = [s for s in (self._inspect(w) for w in workers) if s is not None]
        if not stale:
            return []
        dumps = _dump_stacks(stale)
        waiting = {s.pid: _waiting_on_peers(dumps[s.pid]) for s in stale}
        culprits = [s for s in stale if not waiting[s.pid]] or stale
        for s in culprits:
            with contextlib.suppress(ProcessLookupError):
                os.kill(s.pid, signal.SIGKILL)
        # the waiting peers get a full timeout to fail on their own before they are judged
        self._quiet_until = time.time() + self.hang_timeout
        return [Hung(s.rank, s.local_rank, s.pid, s.seconds, s.step, str(s.stacks),
                     waiting[s.pid], s in culprits) for s in stale]

    def _inspect(self, worker) -> _Stale | None:
        if worker.id is None:
            return None
        path = progress_path(self.logs, os.getpid(), worker.local_rank)
        try:
            touched = path.stat().st_mtime
        except OSError:
            return None
        if touched < self.started:
            return None  # no step completed in this attempt yet
        idle = time.time() - touched
        if idle < self.hang_timeout:
            return None
        try:
            step, finished = read_step(path)
        except (OSError, ValueError):
            step, finished = None, False
        if finished:
            return None
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
    """True when the innermost frame of the dumping (main) thread is torch's own code."""
    block = dump.split("Current thread", 1)[-1]
    frames = [line.strip() for line in block.splitlines() if line.strip().startswith("File ")]
    return bool(frames) and f"{os.sep}torch{os.sep}" in frames[0]
