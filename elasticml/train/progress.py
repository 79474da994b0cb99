"""What a worker leaves on its node's disk so that others can tell how it is doing.

* `logs/progress-<host>-<agent pid>-<local rank>` holds the last completed step and is rewritten
  after every step and after each validation or checkpoint: its modification time is the
  worker's heartbeat (the agent's hang watchdog reads it; ` finished` is appended once the
  training loop is over) and the largest step among these files is how far the run got on
  this node (a restart counts its lost steps against it).
* `logs/stacks-<host>-<agent pid>-<local rank>.txt` receives every thread's Python stack when
  the worker gets SIGUSR1 (`faulthandler`, so it works even while the worker is stuck inside a
  collective). The watchdog sends that signal before it ends a hung worker.

The agent's pid is part of the names because several agents (nodes) may share one run dir.
A worker finds it in `ELASTICML_AGENT_PID` (set by elasticml's agent, whose warm workers are
children of its zygote, not of the agent), else as its parent (a cold worker under torchrun).
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import signal
import socket
from dataclasses import dataclass
from pathlib import Path

STACKS_SIGNAL = signal.SIGUSR1
FINISHED = "finished"
AGENT_PID_ENV = "ELASTICML_AGENT_PID"


def agent_pid() -> int:
    """The pid of the agent that runs this worker."""
    return int(os.environ.get(AGENT_PID_ENV) or os.getppid())


def progress_path(logs: Path, agent_pid: int, local_rank: int) -> Path:
    return logs / f"progress-{socket.gethostname()}-{agent_pid}-{local_rank}"


def stacks_path(logs: Path, agent_pid: int, local_rank: int) -> Path:
    return logs / f"stacks-{socket.gethostname()}-{agent_pid}-{local_rank}.txt"


class Progress:
    """One worker's progress file and stack-dump hook."""

    def __init__(self, logs: Path, local_rank: int) -> None:
        logs.mkdir(parents=True, exist_ok=True)
        agent = agent_pid()
        self.path = progress_path(logs, agent, local_rank)
        self._fd: int | None = None  # created by the first completed step, not before
        self._stacks = open(stacks_path(logs, agent, local_rank), "a")  # noqa: SIM115 - kept open
        faulthandler.register(STACKS_SIGNAL, file=self._stacks, all_threads=True)

    def write(self, step: int) -> None:
        """One `pwrite` into a file kept open: microseconds, and it survives a SIGKILL."""
        os.pwrite(self._descriptor(), f"{step:>20}".encode(), 0)

    def finished(self, step: int) -> None:
        """Training is over (final evaluation from here on): the hang watchdog stops watching."""
        os.pwrite(self._descriptor(), f"{step} {FINISHED}".ljust(20).encode(), 0)

    def _descriptor(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
        return self._fd


def read_step(path: Path) -> tuple[int, bool]:
    """(last completed step, finished) from a progress file; ValueError/OSError if unreadable."""
    words = path.read_text().split()
    return int(words[0]) if words else 0, FINISHED in words


@dataclass(frozen=True)
class LastProgress:
    step: int
    """Largest step any worker of this node (any attempt) completed; 0 when none did."""
    time: float | None
    """When that node last completed a step (unix time), None when never."""


def last_progress(logs: Path) -> LastProgress:
    step, when = 0, None
    for path in logs.glob("progress-*"):
        with contextlib.suppress(ValueError, OSError):
            step = max(step, read_step(path)[0])
            when = max(when or 0.0, path.stat().st_mtime)
    return LastProgress(step, when)
