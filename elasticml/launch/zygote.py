"""This node's launch environment and its zygote, set up before anything imports torch.

`prepare(plan)` puts the launch's environment into this process (threads per worker, the
stop grace, the agent's pid: what torch elastic passes on to every worker) and, for warm
workers (`warm.py`), starts the zygote: Python's `multiprocessing` fork server, told to
import `train/zygote.py` first. `elasticml train` calls it as soon as the recipe is compiled,
so that the zygote's imports (~3 s of CPU: torch, elasticml, the dynamo import) run on one
core while the agent imports torch on another; `launch()` calls it again (both steps are
idempotent). The zygote inherits the environment as it is at its start.

`wait_ready()` returns once the zygote can fork: the agent calls it before its first
rendezvous, so that a node announces itself only when it can start its workers at once. A
node that joins a running job would otherwise have the others stop training, regroup and then
wait for its imports (~0.3 s of every join gap on 2 cores); it costs a single-node launch at
most its rendezvous (~0.15 s), which no longer overlaps with the imports.
"""

from __future__ import annotations

import multiprocessing
import os
import sys

from elasticml.train.checkpoint import STOP_GRACE_ENV
from elasticml.train.progress import AGENT_PID_ENV

PRELOAD = ("__main__", "elasticml.train.zygote")
"""What the zygote imports before it forks: the agent's main module and the zygote's
preparation. Python 3.11's fork server drops the main module (it passes on only a key that
`multiprocessing.spawn` no longer writes), so each worker imports the `elasticml` console
script itself, as `__mp_main__` (~40 ms: the CLI module; `python -m elasticml` costs nothing:
`multiprocessing` skips a package's `__main__`)."""


def available() -> bool:
    """Warm workers need Linux (`fork`, `prctl`) and pidfds that this kernel (5.3 or later)
    and its sandbox (a seccomp profile may refuse the call) allow; elsewhere workers start
    cold."""
    if sys.platform != "linux" or not hasattr(os, "pidfd_open"):
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:
        return False
    return True


def prepare(plan) -> bool:
    """Set this node's launch environment; start the zygote when the plan's workers are warm
    and this platform has them. True when they are."""
    os.environ.update(plan.env)
    os.environ[STOP_GRACE_ENV] = str(plan.stop_grace)
    os.environ[AGENT_PID_ENV] = str(os.getpid())
    if not (plan.warm_workers and available()):
        return False
    multiprocessing.set_forkserver_preload(list(PRELOAD))
    from multiprocessing import forkserver

    forkserver.ensure_running()
    return True


def wait_ready() -> None:
    """Block until the zygote has made its imports (it forks a child that does nothing)."""
    from elasticml.train.warm import nothing

    probe = multiprocessing.get_context("forkserver").Process(target=nothing,
                                                              name="zygote-ready")
    probe.start()
    probe.join()
