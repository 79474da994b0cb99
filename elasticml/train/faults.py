"""Failures on purpose, so users (and the tests) can rehearse what their job does when one hits.

Configured by the recipe's `faults` section; a fault fires on the rank it names just before
that rank starts the named step. With `once` (the default) it fires only in the first attempt:
a marker file in the node's `logs/` remembers that it fired, because a restart forced by a
membership change keeps torch's restart count and a resumed run starts at the very step the
fault named.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from elasticml.recipe.schema import FaultsConfig


class FaultInjector:
    def __init__(self, config: FaultsConfig, rank: int, restart_count: int, emit,
                 logs: Path) -> None:
        self.config, self.rank, self.emit, self.logs = config, rank, emit, logs
        self.armed = restart_count == 0 or not config.once

    def before_step(self, step: int) -> None:
        c = self.config
        if c.step_delay:
            time.sleep(c.step_delay)
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
