"""A warm worker: a process forked from the zygote (`train/zygote.py`) becomes the worker that
`python -u -m elasticml.train.worker ARGS` would be, without paying for the interpreter.

`become_worker` is what the agent's warm start (`launch/warm.py`) runs in each forked child.
It gives the child what torch elastic gives a worker it starts as a subprocess, and then runs
the same entry point (`worker.run`):
* the environment: exactly the one a cold worker would get, the agent's own environment with
  torch's worker variables (RANK, WORLD_SIZE, MASTER_ADDR, ..., TORCHELASTIC_ERROR_FILE) on
  top, so `@record` writes the error file the agent reads;
* stdout and stderr: the files torch's `LogsSpecs` named for this attempt and rank,
  unbuffered (`python -u`);
* a session of its own (torch starts workers with `start_new_session`): a signal to the
  agent's process group, a Ctrl-C, reaches the agent, which stops its workers itself;
* the signal dispositions and mask of a fresh interpreter (the zygote blocks SIGTERM): a
  worker that has not agreed on its state yet dies at once on SIGTERM, as a cold one does,
  even one sent before this set-up ran;
* death with its zygote, which dies with the agent: no worker outlives its agent.
numpy's global random state is drawn afresh, as a fresh interpreter would; every stream the
training uses is seeded from the recipe anyway (`randomness.py`).
"""

from __future__ import annotations

import ctypes
import io
import os
import signal
import sys
import traceback
from typing import NoReturn

DEFAULT_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
                   signal.SIGCHLD)
PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
HELD_SIGNALS = {signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT}
"""Blocked in the zygote, so in a worker until `become` has set it up."""


def become_worker(args: tuple[str, ...], env: dict[str, str], stdout: str,
                  stderr: str) -> NoReturn:
    """Turn this freshly forked child of the zygote into a worker and run it to its exit."""
    become(env, stdout, stderr)
    from elasticml.train import worker

    sys.argv = [worker.__file__, *args]
    try:
        worker.run(list(args))
    except KeyboardInterrupt:  # as an interpreter leaves on an uncaught Ctrl-C: by SIGINT
        traceback.print_exc()
        sys.stderr.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(1)


def become(env: dict[str, str], stdout: str, stderr: str) -> None:
    """Everything a cold worker has before its entry point runs (see the module): its parent,
    session, signal dispositions, environment, log files and numpy's random state."""
    zygote = sys.modules.get("elasticml.train.zygote")
    die_with_parent(zygote.PID if zygote is not None else os.getppid())
    os.setsid()
    for signum in DEFAULT_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD_SIGNALS)  # a pending SIGTERM ends it here
    os.environ.clear()
    os.environ.update(env)
    name_process(f"eml-worker-{env.get('LOCAL_RANK', '')}")
    _redirect(1, stdout)
    _redirect(2, stderr)
    sys.stdout = _unbuffered(1, "strict")
    sys.stderr = _unbuffered(2, "backslashreplace")
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()


def nothing() -> None:
    """A child that only shows that the zygote forks (`launch/zygote.wait_ready`)."""


def die_with_parent(parent: int) -> None:
    """SIGKILL this process when its parent, `parent`, ends; leave at once if it already has
    (it may end between the fork and this call)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != parent:
        os._exit(1)


def name_process(name: str) -> None:
    """The name `ps -o comm` and `top` show (a fork keeps its zygote's command line)."""
    ctypes.CDLL(None).prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)


def _redirect(fd: int, path: str) -> None:
    """Point `fd` at `path` as torch does for a worker's log (truncated, created)."""
    if not path:
        return
    target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(target, fd)
    os.close(target)


def _unbuffered(fd: int, errors: str) -> io.TextIOWrapper:
    """A text stream over `fd` that writes every call through, as `python -u` sets one up."""
    return io.TextIOWrapper(io.FileIO(fd, "w", closefd=False), encoding="utf-8",
                            errors=errors, write_through=True)
