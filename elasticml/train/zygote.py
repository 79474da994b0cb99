"""The zygote's preparation: importing this module is what turns a process into one.

elasticml's agent starts one zygote per node (Python's `multiprocessing` fork server, told to
import this module first; `launch/warm.py`) and from then on forks every worker from it
(`train/warm.py`). A cold worker pays, before it even starts its process group, a fresh
interpreter and `import torch` (~1.4 s), omegaconf and elasticml (~0.3 s) and the
`torch._dynamo` import that `torch.optim.Optimizer.__init__` triggers (~1.8 s of CPU); a
forked worker finds all of it loaded, at every restart and every regroup.

What the preparation does:
* imports torch, the training loop and the worker entry point, and builds a throwaway
  optimizer over one parameter, which runs the dynamo import;
* runs no tensor operation and starts no thread, process group or OpenMP pool: a fork copies
  only the calling thread, so a pool or a lock held by another thread would be broken in every
  worker. torch's intra-op pool is created by the first parallel operation, in the worker, which
  sets its own thread count. (numpy's OpenBLAS starts a thread pool at import when more than
  one thread per worker is allowed; OpenBLAS stops it before every fork and starts it again
  when it is next used, so no thread of it crosses a fork.)
* blocks SIGTERM, SIGHUP and SIGQUIT: a signal sent to the agent's whole process group (a
  scheduler stopping the job) must reach the workers, which save their last completed step,
  without taking the zygote and with it the workers down. Blocked, not ignored: a worker
  inherits the mask, so a SIGTERM sent to it before it is set up waits until it unblocks
  them (`train/warm.py`) and then ends it, as it would end a fresh interpreter, instead of
  being lost. (The fork server itself ignores SIGINT.)
* dies with the agent that started it (`PR_SET_PDEATHSIG`, SIGKILL), and its workers die with
  it (`train/warm.py`): no worker outlives its agent;
* freezes the objects it created out of the garbage collector's reach (`gc.freeze`), so that
  a worker's collections do not touch, and copy, the zygote's memory pages.
"""

from __future__ import annotations

import gc
import os
import signal

from elasticml.train.progress import AGENT_PID_ENV
from elasticml.train.warm import HELD_SIGNALS, die_with_parent, name_process

PID = os.getpid()
"""The zygote's pid: what a worker forked from it finds as its parent (`train/warm.py`)."""


def _prepare() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)
    name_process("eml-zygote")
    agent = os.environ.get(AGENT_PID_ENV)
    if agent:
        die_with_parent(int(agent))

    import torch

    import elasticml.train.loop  # noqa: F401 - loaded here, so that no worker loads it
    import elasticml.train.worker  # noqa: F401

    torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)  # the dynamo import
    gc.collect()
    gc.freeze()


_prepare()
