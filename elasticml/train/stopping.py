"""The stop flag: SIGTERM asks a worker to stop, and it does so where no step is half done.

The signal handler only sets the flag; the trainer reads it at every step boundary, after each
checkpoint and validation, and during every evaluation (`between_batches`: at each module
call), so a stop never waits for a whole validation or the final evaluations to end, and never
cuts a step in half. `StopRequested` is raised where the live state is that of the last
completed step, which the trainer then saves.

With a sharded model (fsdp/hsdp) the save is collective, so every rank must stop at the same
step: the flag is then `agreed`, read only at step boundaries, where the ranks all-reduce it
(one small all-reduce a step) and all stop together when any of them was signalled. An
evaluation under way is not cut short then: every rank finishes it.
"""

from __future__ import annotations

import contextlib

import torch


class StopRequested(Exception):
    """SIGTERM arrived; raised where the live state is that of the last completed step."""


class StopFlag:
    def __init__(self, agreed: bool = False) -> None:
        self.raised, self.agreed = False, agreed

    def set(self, signum=None, frame=None) -> None:
        """The SIGTERM handler."""
        self.raised = True

    def check(self) -> None:
        """Raise `StopRequested` if signalled (never for an `agreed` flag: see
        `at_step_boundary`)."""
        if self.raised and not self.agreed:
            raise StopRequested

    def at_step_boundary(self) -> None:
        """Between two steps: raise `StopRequested` if this rank (or, for an `agreed` flag,
        any rank) was signalled. Collective for an `agreed` flag."""
        if not self.agreed:
            return self.check()
        import torch.distributed as dist

        if dist.is_initialized() and dist.get_world_size() > 1:
            flag = torch.tensor([int(self.raised)], dtype=torch.long)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            # Every rank decides on the reduced flag alone; a SIGTERM that came during the
            # all-reduce stays in `raised` and is agreed on at the next boundary.
            if bool(flag):
                raise StopRequested
        elif self.raised:
            raise StopRequested

    @contextlib.contextmanager
    def between_batches(self):
        """Within this block (evaluations: the model is not changed) the flag is checked at
        every module call, i.e. between evaluation batches, through a global forward pre-hook;
        the task's own evaluation code needs no hook of its own. Nothing for an `agreed`
        flag."""
        if self.agreed:
            yield
            return
        self.check()
        handle = torch.nn.modules.module.register_module_forward_pre_hook(
            lambda module, args: self.check())
        try:
            yield
        finally:
            handle.remove()
        self.check()
