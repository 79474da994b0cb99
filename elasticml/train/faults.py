"""Failures on purpose, so users (and the tests) can rehearse what their job does when one hits.

Configured by the recipe's `faults` section; a fault fires on the rank it names just before
that rank starts the named step. `hold_file` pauses every rank before each step while the
file exists (a SIGTERM, i.e. a stop or a regroup, ends the pause: the step after it runs,
then the stop is taken at the next step boundary).

With `once` (the default) a fault fires only in the first attempt: a marker file in the
node's `logs/` remembers that it fired, because a restart forced by a membership change keeps
torch's restart count and a resumed run starts at the very step the fault named.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from elasticml.recipe.schema import FaultsConfig

HOLD_POLL_S = 0.05


class FaultInjector:
    def __init__(self, config: FaultsConfig, rank: int, restart_count: int, emit,
                 logs: Path, stopping: Callable[[], bool] = lambda: False,
                 beat: Callable[[], None] = lambda: None) -> None:
        self.config, self.rank, self.emit, self.logs = config, rank, emit, logs
        self.armed = restart_count == 0 or not config.once
        self.stopping = stopping
        """True once this rank was asked to stop: a hold ends then."""
        self.beat = beat
        """Says this rank is alive while it holds (else the hang watchdog would end it)."""
        self.hold = Path(config.hold_file) if config.hold_file else None

    def before_step(self, step: int) -> None:
        c = self.config
        if c.step_delay:
            time.sleep(c.step_delay)
        while self.hold is not None and self.hold.exists() and not self.stopping():
            self.beat()
            time.sleep(HOLD_POLL_S)
        if not self.armed:
            return
        if c.kill_rank == self.rank and c.kill_step == step and self._fire("kill"):
            self.emit("fault", fault="kill", step=step, rank=self.rank)
            os.kill(os.getpid(), signal.SIGKILL)
        if c.hang_rank == self.rank and c.hang_step == step and self._fire("hang"):
            self.emit("fault", fault="hang", step=step, rank=self.rank)
            while True:  # no progress from here on; the hang watchdog must notice
                time.sleep(3600)

    def _fire(self, fault: str) -> bool:
        """False when a `once` fault already fired in an earlier attempt on this node."""
        marker = self.logs / f"fault-{fault}-rank{self.rank}-fired"
        if self.config.once and marker.exists():
            return False
        marker.touch()
        return True
