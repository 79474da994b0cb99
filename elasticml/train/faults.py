"""Failures on purpose, so users (and the tests) can rehearse what their job does when one hits.

Configured by the recipe's `faults` section; a fault fires on the rank it names just before
that rank starts the named step, and by default only in the first attempt, so the restarted
group runs through.
"""

from __future__ import annotations

import os
import signal
import time

from elasticml.recipe.schema import FaultsConfig


class FaultInjector:
    def __init__(self, config: FaultsConfig, rank: int, restart_count: int, emit) -> None:
        self.config, self.rank, self.emit = config, rank, emit
        self.armed = restart_count == 0 or not config.once

    def before_step(self, step: int) -> None:
        if not self.armed:
            return
        c = self.config
        if c.kill_rank == self.rank and c.kill_step == step:
            self.emit("fault", fault="kill", step=step, rank=self.rank)
            os.kill(os.getpid(), signal.SIGKILL)
        if c.hang_rank == self.rank and c.hang_step == step:
            self.emit("fault", fault="hang", step=step, rank=self.rank)
            while True:  # no progress from here on; the hang watchdog must notice
                time.sleep(3600)
