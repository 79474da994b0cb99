"""Warm workers: torch elastic's agent starts its workers by forking a zygote, not as fresh
interpreters (recipe key `elastic.warm_workers`, on by default; the `--dry-run` torchrun line
starts cold workers, which train the same way).

Why: a worker restart is mostly worker start-up. A fresh interpreter pays `import torch`,
omegaconf, elasticml and the `torch._dynamo` import that every `torch.optim` optimizer
triggers, ~3 s of CPU before it even joins its process group; on a 2-core machine that was
~2 of the ~2.4 s from a crash to the next step (docs/benchmarks.md). The zygote pays it once
per node, while the agent rendezvouses, and a forked worker starts training in tenths of a
second. The other design, workers that live through a membership change and only rebuild
their process group, would leave torch elastic's model, in which the agent stops and starts
its workers at every regroup: the zygote keeps the agent, its rendezvous, restarts, failure
records and shutdown exactly as they are, and changes only how a worker process comes to be.

How:
* the zygote is Python's `multiprocessing` fork server (one per agent process, started by
  `zygote.prepare` as early as the launch allows), told to import `train/zygote.py` first:
  torch, the training loop, the dynamo import, no threads (that module says what it must not
  do, and why);
* `WarmWorkers` is a torch `PContext` (the object torch's agent starts, polls and closes its
  workers through) whose processes come from the fork server. The agent's `_start_workers`
  builds the same environment torch's does (`worker_environment`) and creates one; torch's
  own `_monitor_workers` and `_shutdown` drive it unchanged;
* a forked worker (`train/warm.py`) sets that environment, points stdout/stderr at the files
  torch's `LogsSpecs` named, takes a session of its own and runs the worker's entry point, so
  `@record` error files, exit codes and signals read exactly as a cold worker's;
* the fork server reaps the workers and reports each exit status (a signal as a negative
  code, as `subprocess` does); the agent signals each worker through its pidfd, so a pid the
  kernel has reused is never hit, and, as torch does for a cold worker, the worker's process
  group too (its DataLoader workers and whatever else it started);
* lifetimes: the zygote dies with the agent and the workers with the zygote
  (`PR_SET_PDEATHSIG`), so no worker outlives its agent; the zygote blocks SIGTERM and the
  workers are in sessions of their own, so a signal to the agent's process group (a scheduler
  stopping the job) takes down neither: the agent's handler stops the workers, which save.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import time

from torch.distributed.elastic.multiprocessing.api import PContext, RunProcsResult
from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

from elasticml.train.warm import become_worker


class NoZygote(RuntimeError):
    """The zygote could not fork a worker (it did not start, or died): start them cold."""


def worker_environment(worker_group, worker, restart_count: int) -> dict[str, str]:
    """The variables torch's `LocalElasticAgent._start_workers` sets for `worker` (LOCAL_RANK
    and CUDA_VISIBLE_DEVICES are the agent's `_set_local_rank_env`); a test compares the two."""
    spec = worker_group.spec
    env = {
        "RANK": str(worker.global_rank),
        "GROUP_RANK": str(worker_group.group_rank),
        "ROLE_RANK": str(worker.role_rank),
        "ROLE_NAME": spec.role,
        "LOCAL_WORLD_SIZE": str(spec.local_world_size),
        "WORLD_SIZE": str(worker.world_size),
        "GROUP_WORLD_SIZE": str(worker_group.group_world_size),
        "ROLE_WORLD_SIZE": str(worker.role_world_size),
        "MASTER_ADDR": worker_group.master_addr,
        "MASTER_PORT": str(worker_group.master_port),
        "TORCHELASTIC_RESTART_COUNT": str(restart_count),
        "TORCHELASTIC_MAX_RESTARTS": str(spec.max_restarts),
        "TORCHELASTIC_RUN_ID": spec.rdzv_handler.get_run_id(),
        "TORCHELASTIC_USE_AGENT_STORE": str(spec.rdzv_handler.use_agent_store),
        "TORCH_NCCL_ASYNC_ERROR_HANDLING": os.getenv("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1"),
    }
    if "OMP_NUM_THREADS" in os.environ:
        env["OMP_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"]
    return env


class WarmWorkers(PContext):
    """One attempt's workers, forked from the zygote; polled and closed as torch's
    `SubprocessContext` is (every failure recorded with its exit code and error file; when one
    fails or all are done, the rest get `death_sig`, then SIGKILL after `grace` seconds)."""

    def __init__(self, name: str, args: dict[int, tuple], envs: dict[int, dict[str, str]],
                 logs_specs, grace: float, log_line_prefixes: dict[int, str] | None = None,
                 target=become_worker):
        super().__init__(name, target, args, envs, logs_specs, log_line_prefixes)
        self.grace = grace
        self._processes: dict[int, multiprocessing.process.BaseProcess] = {}
        self._pidfds: dict[int, int] = {}
        self._running = set(range(self.nprocs))
        self._failures: dict[int, ProcessFailure] = {}

    def _start(self) -> None:
        if self._processes:
            raise ValueError("these workers were started already")
        context = multiprocessing.get_context("forkserver")
        for rank in range(self.nprocs):
            env = {**os.environ, **self.envs[rank]}  # what torch's subprocess start passes
            process = context.Process(
                target=self.entrypoint, name=f"{self.name}-{rank}",
                args=(self.args[rank], env, self.stdouts[rank], self.stderrs[rank]))
            try:
                process.start()
            except (OSError, EOFError) as err:  # no fork server, or it died while asked
                raise NoZygote(f"{type(err).__name__}: {err}") from err
            self._processes[rank] = process
            with contextlib.suppress(OSError):  # gone already, or no pidfds: `_signal` copes
                self._pidfds[rank] = os.pidfd_open(process.pid)

    def _capture_exits(self) -> None:
        for rank in sorted(self._running):
            process = self._processes[rank]
            code = process.exitcode
            if code is None:
                continue
            self._running.discard(rank)
            if code != 0:
                self._failures[rank] = ProcessFailure(
                    local_rank=rank, pid=process.pid, exitcode=code,
                    error_file=self.error_files[rank])

    def _poll(self) -> RunProcsResult | None:
        self._capture_exits()
        if self._running and not self._failures:
            return None
        self.close(timeout=self.grace)  # the others, when one failed
        self._capture_exits()
        result = RunProcsResult(failures=dict(self._failures), stdouts=self.stdouts,
                                stderrs=self.stderrs)
        if not result.is_failed():
            result.return_values = dict.fromkeys(range(self.nprocs))
        return result

    def pids(self) -> dict[int, int]:
        return {rank: process.pid for rank, process in self._processes.items()}

    def _close(self, death_sig: signal.Signals, timeout: float = 30) -> None:
        alive = [rank for rank, process in self._processes.items() if process.is_alive()]
        for rank in alive:
            self._signal(rank, death_sig)
        end = time.monotonic() + timeout
        for rank in alive:
            self._processes[rank].join(max(0.0, end - time.monotonic()))
        for rank in alive:
            process = self._processes[rank]
            if process.is_alive():
                self._signal(rank, signal.SIGKILL)
                process.join(timeout)  # bounded: a process in uninterruptible sleep stays
        for rank, process in self._processes.items():
            if not process.is_alive() and rank in self._pidfds:
                os.close(self._pidfds.pop(rank))

    def _signal(self, rank: int, signum: signal.Signals) -> None:
        """`signum` to the worker and, while it lives, to its process group (it leads one from
        its first instructions on, `train/warm.py`)."""
        process, pidfd = self._processes[rank], self._pidfds.get(rank)
        try:
            if pidfd is not None:
                signal.pidfd_send_signal(pidfd, signum)
            elif process.is_alive():  # no pidfd: the pid, which its zygote has not reaped
                os.kill(process.pid, signum)
            else:
                return
        except ProcessLookupError:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signum)
