"""Run a `LaunchPlan` on this node with torch elastic's own `LocalElasticAgent`.

`launch()` follows `torch.distributed.launcher.api.launch_agent` (rendezvous handler from the
registry, a `WorkerSpec`, the agent's `run()`). The agent is `ObservingAgent`, a subclass that
writes every rendezvous round, worker failure (with the failing rank's own exception from
its error file) and restart to the run's events, and adds four things of its own:
* the hang watchdog (`watchdog.py`), which turns a silent hang into an ordinary failure;
* before it restarts its workers it says so in the round (`handler.regroup`), so the other
  members wait for it instead of forming a round without it;
* workers that failed only because a peer stopped to take a newcomer in (a planned regroup,
  not a failure) are restarted as a membership change: they cost no `max_restarts`;
* a worker that stopped on a problem with the user's input (exit status
  `WORKER_INPUT_ERROR_EXIT`) ends the job at once with that one line: restarting cannot
  fix it;
* with `elastic.warm_workers` (the default) its workers are forked from a zygote that has
  imported torch and elasticml once, instead of started as fresh interpreters (`warm.py`);
  starting them is the only thing that changes. Without a zygote to fork from (it cannot
  start), workers start cold, with a warning.
Workers get `elastic.stop_grace` seconds between SIGTERM and SIGKILL (torch: 30 s).

Failure modes an operator meets here:
* rendezvous never completes: fewer than MIN nodes reached the endpoint within
  `elastic.rdzv.join_timeout` (check the endpoint and that every node uses the same run id);
* `max_restarts` used up: the job fails and `elasticml report` lists every failure's cause;
* the store host is lost (c10d with the store inside an agent): use etcd-v2 or
  `elasticml rendezvous serve` so rendezvous state lives outside the training nodes.
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import socket
import sys
import time
from dataclasses import asdict, dataclass

from torch.distributed.elastic.agent.server.api import RunResult, WorkerSpec, WorkerState
from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent
from torch.distributed.elastic.rendezvous import RendezvousParameters
from torch.distributed.elastic.rendezvous.registry import get_rendezvous_handler
from torch.distributed.elastic.utils import macros

from elasticml.errors import WORKER_INPUT_ERROR_EXIT
from elasticml.launch import rendezvous, warm, zygote
from elasticml.launch.plan import LaunchPlan
from elasticml.launch.watchdog import HangWatchdog
from elasticml.telemetry.events import EventLog

EXIT_BARRIER_S = 10
"""How long an agent whose workers finished waits for the other nodes' workers to finish."""


@dataclass
class Outcome:
    succeeded: bool
    failures: dict[int, dict]
    seconds: float
    needed: bool = True
    """False when the job finished while this node waited to join (a spare)."""


class WorkerInputError(Exception):
    """A worker stopped on a problem with the user's input; its one-line message."""


class ObservingAgent(LocalElasticAgent):
    """A `LocalElasticAgent` that writes what it sees to the event log (see the module)."""

    def __init__(self, *args, events: EventLog, watchdog: HangWatchdog | None = None,
                 node: str | None = None, stop_grace: float = 30.0,
                 warm_args: tuple[str, ...] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.events, self.watchdog, self.stop_grace = events, watchdog, stop_grace
        self.warm_args = warm_args
        """The worker's arguments when its workers are forked from the zygote; None: cold."""
        self.node = node or socket.gethostname()
        self._round = 0
        self._last_world: int | None = None
        self._last_members: list[dict] | None = None
        self._cause: dict = {}

    def _rendezvous(self, worker_group) -> None:
        started = time.perf_counter()
        super()._rendezvous(worker_group)
        seconds = round(time.perf_counter() - started, 4)
        world = worker_group.group_world_size * worker_group.spec.local_world_size
        members = _members(worker_group.spec.rdzv_handler)
        self.events.emit("rendezvous", round=self._round, seconds=seconds,
                         group_rank=worker_group.group_rank,
                         group_world_size=worker_group.group_world_size, world_size=world,
                         previous_world_size=self._last_world, members=members)
        if self._last_world is not None and world != self._last_world:
            before = {m["node"] for m in self._last_members or []}
            now = {m["node"] for m in members or []}
            self.events.emit("membership", world_size=world, previous_world_size=self._last_world,
                             nodes=worker_group.group_world_size,
                             joined=sorted(now - before), left=sorted(before - now))
        self._round += 1
        self._last_world, self._last_members = world, members

    def _start_workers(self, worker_group):
        if self.watchdog is not None:
            self.watchdog.reset()
        pids = None
        if self.warm_args is not None:
            try:
                pids = self._start_warm_workers(worker_group)
            except warm.NoZygote as err:  # no zygote to fork from: a slower start
                self.cold(f"cannot fork workers from the zygote ({err})")
        if pids is None:
            pids = super()._start_workers(worker_group)
        self.events.emit("workers_started", restart_count=self._restart_count(),
                         pids=list(pids.values()), warm=self.warm_args is not None)
        return pids

    def cold(self, why: str) -> None:
        """Start workers as fresh interpreters from now on, and say why (once)."""
        self.warm_args = None
        message = f"{why}; workers start as fresh interpreters from now on"
        print(f"warning: {message}", file=sys.stderr, flush=True)
        self.events.emit("warning", message=message)

    def _start_warm_workers(self, worker_group) -> dict[int, int]:
        """torch's `_start_workers` with its process start swapped for `warm.WarmWorkers`:
        the same environment, local watchdog, health check and log files."""
        spec, restart_count = worker_group.spec, self._restart_count()
        envs, args = {}, {}
        for worker in worker_group.workers:
            env = warm.worker_environment(worker_group, worker, restart_count)
            self._set_local_rank_env(env, worker.local_rank, spec)
            envs[worker.local_rank] = env
            args[worker.local_rank] = tuple(
                macros.substitute(list(self.warm_args), str(worker.local_rank)))
        self._setup_local_watchdog(envs=envs)
        self._setup_healthcheck()
        workers = warm.WarmWorkers(spec.role, args, envs, self._logs_specs,
                                   grace=self.stop_grace)
        try:
            workers.start()
        except BaseException:  # as torch's start_processes: none of them is left running
            workers.close(timeout=self.stop_grace)
            raise
        self._pcontext = workers
        return workers.pids()

    def _stop_workers(self, worker_group) -> None:
        self._shutdown(timeout=int(round(self.stop_grace)))

    def _monitor_workers(self, worker_group) -> RunResult:
        result = super()._monitor_workers(worker_group)
        if result.state == WorkerState.HEALTHY and self.watchdog is not None:
            for hung in self.watchdog.check(worker_group.workers):
                self.events.emit("hang", node=self.node, **asdict(hung))
                if hung.killed:
                    self._cause = {"cause": "hang", "failed_rank": hung.rank,
                                   "local_rank": hung.local_rank, "node": self.node}
        if result.state != WorkerState.FAILED:
            return result
        described = [describe_failure(rank, f) for rank, f in result.failures.items()]
        refused = [d for d in described if d["exitcode"] == WORKER_INPUT_ERROR_EXIT]
        if refused:
            for info in refused:
                self.events.emit("worker_failed", node=self.node, **info)
            raise WorkerInputError(refused[0]["error"])
        if not self._cause and _ending_reason(worker_group.spec.rdzv_handler) == "join":
            # A peer stopped its workers to take a newcomer in: ours lost their collective
            # partner. A planned regroup, not a failure (the restart below says membership).
            return RunResult(state=WorkerState.HEALTHY)
        for info in described:
            self.events.emit("worker_failed", node=self.node, **info)
        if not self._cause:
            self._cause = root_cause(described, self.node)
        return result

    def _restart_workers(self, worker_group) -> None:
        handler = worker_group.spec.rdzv_handler
        if worker_group.state == WorkerState.HEALTHY:
            reason = _regroup(handler, "membership")
            cause = {"cause": "membership", "reason": reason}
        else:
            cause = self._cause or {"cause": "failure"}
            _regroup(handler, cause["cause"])
        self._cause = {}
        self.events.emit("restart", restart_count=self._restart_count(), **cause)
        super()._restart_workers(worker_group)

    def _restart_count(self) -> int:
        spec = self._worker_group.spec
        return spec.max_restarts - self._remaining_restarts


def _members(handler) -> list[dict] | None:
    """Every node of the round by group rank, from the round itself."""
    membership = getattr(getattr(handler, "node", None), "membership", None)
    if membership is None:
        return None
    return [{"node": card.name, "pid": card.pid} for card in membership.cards]


def _regroup(handler, reason: str) -> str:
    regroup = getattr(handler, "regroup", None)
    return regroup(reason) if regroup is not None else reason


def _ending_reason(handler) -> str | None:
    ending_reason = getattr(handler, "ending_reason", None)
    return ending_reason() if ending_reason is not None else None


def root_cause(described: list[dict], node: str) -> dict:
    """The failure that started it: a worker killed by a signal other than the agent's own
    SIGTERM first, then one that exited with an error, then whatever is left."""
    def weight(info: dict) -> int:
        if info["signal"] and info["signal"] != "SIGTERM":
            return 0
        return 1 if info["signal"] is None else 2

    first = min(described, key=weight)
    return {"cause": "failure", "failed_rank": first["rank"], "local_rank": first["local_rank"],
            "node": node, "exitcode": first["exitcode"], "signal": first["signal"],
            "error": (first["error"] or "")[:300]}


def describe_failure(rank: int, failure) -> dict:
    """The failing rank's own exception (from its `@record` error file), exit code, signal."""
    info = {"rank": rank, "local_rank": failure.local_rank, "exitcode": failure.exitcode,
            "signal": failure.signal_name() if failure.exitcode < 0 else None,
            "error": None, "traceback": None}
    data = failure.error_file_data or {}
    message = data.get("message") if isinstance(data, dict) else None
    if isinstance(message, dict):
        info["error"] = message.get("message")
        info["traceback"] = (message.get("extraInfo") or {}).get("py_callstack")
    elif isinstance(message, str):
        info["error"] = message
    if info["error"] == "<NONE>":  # what torch writes when the rank left no error file
        info["error"] = None
    if info["error"] is None and info["signal"]:
        info["error"] = f"killed by {info['signal']}"
    elif info["error"] is None:
        info["error"] = f"exited with code {failure.exitcode}"
    return info


def launch(plan: LaunchPlan, events: EventLog) -> Outcome:
    """Rendezvous, start and supervise this node's workers until the job ends."""
    rendezvous.register()
    # `kill -USR2 <agent pid>` prints every thread's stack on the agent's stderr, even while
    # its main thread is stuck in a call into torch (docs/operations.md).
    faulthandler.register(signal.SIGUSR2, all_threads=True)
    why_cold = None
    try:
        warm_workers = zygote.prepare(plan)  # environment and zygote (idempotent: zygote.py)
    except OSError as err:
        warm_workers, why_cold = False, f"the zygote did not start ({type(err).__name__}: {err})"
    if plan.warm_workers and not warm_workers and why_cold is None:
        why_cold = "warm workers need pidfds (Linux 5.3 or later) and this node has none"
    config = plan.to_launch_config()
    params = RendezvousParameters(
        backend=plan.rdzv_backend,
        endpoint=plan.rdzv_endpoint,
        run_id=plan.run_id,
        min_nodes=plan.min_nodes,
        max_nodes=plan.max_nodes,
        local_addr=plan.local_addr,
        **plan.rdzv_configs,
    )
    os.environ["TORCHELASTIC_SIGNALS_TO_HANDLE"] = config.signals_to_handle
    handler = get_rendezvous_handler(params)
    spec = WorkerSpec(
        role="trainer",
        local_world_size=plan.nproc_per_node,
        entrypoint=sys.executable,
        args=tuple(plan.worker_command()),
        rdzv_handler=handler,
        max_restarts=plan.max_restarts,
        monitor_interval=plan.monitor_interval,
        local_addr=plan.local_addr,
    )
    watchdog = HangWatchdog(plan.run_dir / "logs", plan.hang_timeout,
                            plan.collective_timeout) if plan.hang_timeout else None
    agent = ObservingAgent(spec=spec, logs_specs=config.logs_specs, start_method="spawn",
                           exit_barrier_timeout=EXIT_BARRIER_S, events=events,
                           watchdog=watchdog, node=plan.local_addr, stop_grace=plan.stop_grace,
                           warm_args=plan.worker_args if warm_workers else None)
    events.emit("launch", nnodes=plan.nnodes, nproc_per_node=plan.nproc_per_node,
                backend=plan.rdzv_backend, endpoint=plan.rdzv_endpoint, run_id=plan.run_id,
                command=plan.torchrun_command())
    started = time.perf_counter()
    try:
        if warm_workers:
            try:
                zygote.wait_ready()
            except (OSError, EOFError) as err:
                why_cold = f"the zygote did not start ({type(err).__name__}: {err})"
        if why_cold:
            agent.cold(why_cold)
        result = agent.run()
    except BaseException as err:
        from torch.distributed.elastic.multiprocessing.api import SignalException

        stopped = isinstance(err, SignalException | KeyboardInterrupt)
        events.emit("agent_done", status="stopped" if stopped else "error",
                    error=f"{type(err).__name__}: {err}",
                    seconds=round(time.perf_counter() - started, 3))
        raise
    finally:
        # Closes the job only if this node's workers finished it; otherwise only says that
        # this node left, so the others carry on.
        handler.shutdown()
    seconds = time.perf_counter() - started
    if result is None:  # the job finished while this node waited to join
        events.emit("agent_done", status="not_needed", seconds=round(seconds, 3))
        return Outcome(True, {}, seconds, needed=False)
    failed = result.is_failed()
    failures = {rank: describe_failure(rank, f) for rank, f in result.failures.items()}
    events.emit("agent_done", status="failed" if failed else "succeeded",
                seconds=round(seconds, 3), failures=json.loads(json.dumps(failures)))
    return Outcome(not failed, failures, seconds)
