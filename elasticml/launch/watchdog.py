"""The hang watchdog the agent runs between its checks on the workers (DESIGN decision 9).

torch elastic only sees workers that exit; a worker stuck in a collective or a deadlock looks
healthy to it forever. Each worker rewrites its progress file after every step
(`train/progress.py`), so the file's age is the time since the worker last made progress.
A worker whose file is older than `elastic.hang_timeout` is hung: the watchdog asks it for its
Python stacks (SIGUSR1, written by `faulthandler` into `logs/stacks-*.txt`), gives it a moment
to write them, then SIGKILLs it. torch's own monitoring then sees a failed worker and restarts
the group as for any crash.

A worker is watched from its first completed step in the current attempt: start-up (imports,
process group, state agreement) is bounded by the rendezvous and collective timeouts instead.
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

from elasticml.train.progress import STACKS_SIGNAL, progress_path, stacks_path

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


class HangWatchdog:
    def __init__(self, logs: Path, hang_timeout: float) -> None:
        self.logs, self.hang_timeout = logs, hang_timeout
        self.started = time.time()

    def reset(self) -> None:
        """A new attempt began: progress from earlier attempts does not count."""
        self.started = time.time()

    def check(self, workers) -> list[Hung]:
        """Find hung workers, dump their stacks and SIGKILL them; returns what was done."""
        hung = [h for h in (self._inspect(w) for w in workers) if h is not None]
        for h in hung:
            with contextlib.suppress(ProcessLookupError):
                os.kill(h.pid, STACKS_SIGNAL)
        if hung:
            time.sleep(STACKS_GRACE_S)
        for h in hung:
            with contextlib.suppress(ProcessLookupError):
                os.kill(h.pid, signal.SIGKILL)
        return hung

    def _inspect(self, worker) -> Hung | None:
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
        step = None
        with contextlib.suppress(OSError, ValueError):
            step = int(path.read_text())
        stacks = stacks_path(self.logs, os.getpid(), worker.local_rank)
        return Hung(worker.global_rank, worker.local_rank, int(worker.id), round(idle, 3), step,
                    str(stacks))
