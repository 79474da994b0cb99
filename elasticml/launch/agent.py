"""Run a `LaunchPlan` on this node with torch elastic's own `LocalElasticAgent`.

`launch()` follows `torch.distributed.launcher.api.launch_agent` (rendezvous handler from the
registry, a `WorkerSpec`, the agent's `run()`), with one change: the agent is
`ObservingAgent`, a subclass that only *reports* — every rendezvous round, worker failure
(with the failing rank's own exception from its error file) and restart becomes an event in
the run dir. Supervision, restarts and membership stay torch's.

Failure modes an operator meets here:
* rendezvous never completes: fewer than MIN nodes reached the endpoint within
  `elastic.rdzv.join_timeout` (check the endpoint and that every node uses the same run id);
* `max_restarts` used up: the job fails and `elasticml report` lists every failure's cause;
* the store host is lost (c10d with the store inside an agent): use etcd-v2 or
  `elasticml rendezvous serve` so rendezvous state lives outside the training nodes.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass

from torch.distributed.elastic.agent.server.api import RunResult, WorkerSpec, WorkerState
from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent
from torch.distributed.elastic.rendezvous import RendezvousParameters
from torch.distributed.elastic.rendezvous.registry import get_rendezvous_handler

from elasticml.launch import rendezvous
from elasticml.launch.plan import LaunchPlan
from elasticml.telemetry.events import EventLog


@dataclass
class Outcome:
    succeeded: bool
    failures: dict[int, dict]
    seconds: float


class ObservingAgent(LocalElasticAgent):
    """A `LocalElasticAgent` that writes what it sees to the event log, and changes nothing."""

    def __init__(self, *args, events: EventLog, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.events = events
        self._round = 0
        self._last_world: int | None = None

    def _rendezvous(self, worker_group) -> None:
        started = time.perf_counter()
        super()._rendezvous(worker_group)
        world = worker_group.group_world_size
        self.events.emit(
            "rendezvous",
            round=self._round,
            seconds=round(time.perf_counter() - started, 4),
            group_rank=worker_group.group_rank,
            group_world_size=world,
            world_size=world * worker_group.spec.local_world_size,
            previous_world_size=self._last_world,
        )
        self._round += 1
        self._last_world = world * worker_group.spec.local_world_size

    def _start_workers(self, worker_group):
        pids = super()._start_workers(worker_group)
        self.events.emit("workers_started", restart_count=self._restart_count(),
                         pids=list(pids.values()))
        return pids

    def _monitor_workers(self, worker_group) -> RunResult:
        result = super()._monitor_workers(worker_group)
        if result.state == WorkerState.FAILED:
            for rank, failure in result.failures.items():
                self.events.emit("worker_failed", **describe_failure(rank, failure))
        return result

    def _restart_workers(self, worker_group) -> None:
        cause = "membership" if worker_group.state == WorkerState.HEALTHY else "failure"
        self.events.emit("restart", cause=cause, restart_count=self._restart_count() + (
            cause == "failure"))
        super()._restart_workers(worker_group)

    def _restart_count(self) -> int:
        spec = self._worker_group.spec
        return spec.max_restarts - self._remaining_restarts


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
    if info["error"] is None and info["signal"]:
        info["error"] = f"killed by {info['signal']}"
    elif info["error"] is None:
        info["error"] = f"exited with code {failure.exitcode}"
    return info


def launch(plan: LaunchPlan, events: EventLog) -> Outcome:
    """Rendezvous, start and supervise this node's workers until the job ends."""
    rendezvous.register()
    os.environ.update(plan.env)
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
    spec = WorkerSpec(
        role="trainer",
        local_world_size=plan.nproc_per_node,
        entrypoint=sys.executable,
        args=tuple(plan.worker_command()),
        rdzv_handler=get_rendezvous_handler(params),
        max_restarts=plan.max_restarts,
        monitor_interval=plan.monitor_interval,
        local_addr=plan.local_addr,
    )
    agent = ObservingAgent(spec=spec, logs_specs=config.logs_specs, start_method="spawn",
                           events=events)
    events.emit("launch", nnodes=plan.nnodes, nproc_per_node=plan.nproc_per_node,
                backend=plan.rdzv_backend, endpoint=plan.rdzv_endpoint, run_id=plan.run_id,
                command=plan.torchrun_command())
    started = time.perf_counter()
    shutdown_rdzv = True
    try:
        result = agent.run()
    except BaseException as err:
        from torch.distributed.elastic.multiprocessing.api import SignalException

        shutdown_rdzv = not isinstance(err, SignalException)  # let others carry on
        events.emit("agent_done", status="stopped" if not shutdown_rdzv else "error",
                    error=f"{type(err).__name__}: {err}",
                    seconds=round(time.perf_counter() - started, 3))
        raise
    finally:
        if shutdown_rdzv:
            spec.rdzv_handler.shutdown()
    seconds = time.perf_counter() - started
    failed = result is None or result.is_failed()
    failures = {} if result is None else {
        rank: describe_failure(rank, f) for rank, f in result.failures.items()}
    events.emit("agent_done", status="failed" if failed else "succeeded",
                seconds=round(seconds, 3), failures=json.loads(json.dumps(failures)))
    return Outcome(not failed, failures, seconds)
