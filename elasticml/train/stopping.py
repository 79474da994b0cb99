"""The stop flag: SIGTERM asks a worker to stop, and it does so where no step is half done.

The signal handler only sets the flag; the trainer reads it at every step boundary, after each
checkpoint and validation, and during every evaluation (`between_batches`: at each module
call), so a stop never waits for a whole validation or the final evaluations to end, and never
cuts a step in half. `StopRequested` is raised where the live state is that of the last
completed step, which the trainer then saves.
"""

from __future__ import annotations

import contextlib

import torch


class StopRequested(Exception):
    """SIGTERM arrived; raised where the live state is that of the last completed step."""


class StopFlag:
    def __init__(self) -> None:
        self.raised = False

    def set(self, signum=None, frame=None) -> None:
        """The SIGTERM handler."""
        self.raised = True

    def check(self) -> None:
        if self.raised:
            raise StopRequested

    @contextlib.contextmanager
    def between_batches(self):
        """Within this block (evaluations: the model is not changed) the flag is checked at
        every module call, i.e. between evaluation batches, through a global forward pre-hook;
        the task's own evaluation code needs no hook of its own."""
        self.check()
        handle = torch.nn.modules.module.register_module_forward_pre_hook(
            lambda module, args: self.check())
        try:
            yield
        finally:
            handle.remove()
        self.check()
