"""`LaunchPlan`: the single description of a launch, computed once from a recipe.

Two renderers read it and nothing else: `to_launch_config()` gives the
`torch.distributed.launcher.api.LaunchConfig` that `elasticml train` runs, and
`torchrun_command()` gives the equivalent shell line that `--dry-run` prints. Because both
come from the same value, the printed command runs the same job under plain `torchrun`.

Environment set for every agent and worker:
* `TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1` (unless `elastic.share_store`): in torch 2.13 the
  shared store deadlocks scale-up and hands restarted workers stale keys.
* `OMP_NUM_THREADS` = CPU cores // local workers: torch only sets 1, and only for nproc > 1.

Rendezvous backends are elasticml's own (`elasticml-c10d`, `elasticml-etcd-v2`), registered
through torch's `torchrun.handlers` entry point, so `torchrun` finds them too. They run
`launch/rounds.py`, a handler without heartbeats that regroups as soon as the survivors of a
failure are back, and they take fractional timings where torchrun's stock ones take whole
seconds.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from elasticml.recipe.checks import parse_nnodes
from elasticml.recipe.load import training_hash
from elasticml.recipe.resources import threads_per_worker
from elasticml.recipe.schema import Recipe
from elasticml.rundir import RunDir
from elasticml.train.batching import BatchPlan, plans_for_sizes

WORKER_MODULE = "elasticml.train.worker"
LOCAL_ENDPOINT = "127.0.0.1:0"


@dataclass(frozen=True)
class LaunchPlan:
    min_nodes: int
    max_nodes: int
    nproc_per_node: int
    run_id: str
    run_dir: Path
    rdzv_backend: str
    rdzv_endpoint: str
    rdzv_configs: dict[str, str]
    max_restarts: int
    monitor_interval: float
    env: dict[str, str]
    worker_args: tuple[str, ...]
    local_addr: str | None = None
    hang_timeout: float = 0.0
    """Seconds without progress after which the agent ends a worker (0: never)."""
    batch_plans: tuple[BatchPlan, ...] = field(default=())

    @property
    def nnodes(self) -> str:
        if self.min_nodes == self.max_nodes:
            return str(self.min_nodes)
        return f"{self.min_nodes}:{self.max_nodes}"

    def to_launch_config(self):
        """The config `torch.distributed.launcher.api` runs (imports torch)."""
        from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, Std
        from torch.distributed.launcher.api import LaunchConfig

        logs = DefaultLogsSpecs(log_dir=str(self.run_dir / "logs"), redirects=Std.ALL)
        return LaunchConfig(
            min_nodes=self.min_nodes,
            max_nodes=self.max_nodes,
            nproc_per_node=self.nproc_per_node,
            logs_specs=logs,
            run_id=self.run_id,
            rdzv_endpoint=self.rdzv_endpoint,
            rdzv_backend=self.rdzv_backend,
            rdzv_configs=dict(self.rdzv_configs),
            max_restarts=self.max_restarts,
            monitor_interval=self.monitor_interval,
            start_method="spawn",
            local_addr=self.local_addr,
        )

    def worker_command(self) -> list[str]:
        """What each worker runs; the agent prefixes the interpreter."""
        return ["-u", "-m", WORKER_MODULE, *self.worker_args]

    def torchrun_command(self) -> str:
        """The equivalent plain-torchrun line, environment included."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        conf = ",".join(f"{k}={v}" for k, v in self.rdzv_configs.items())
        args = [
            "torchrun",
            f"--nnodes={self.nnodes}",
            f"--nproc-per-node={self.nproc_per_node}",
            f"--rdzv-backend={self.rdzv_backend}",
            f"--rdzv-endpoint={self.rdzv_endpoint}",
            f"--rdzv-id={self.run_id}",
            f"--rdzv-conf={conf}",
            f"--max-restarts={self.max_restarts}",
            f"--monitor-interval={self.monitor_interval}",
            f"--log-dir={self.run_dir / 'logs'}",
            "--redirects=3",
        ]
        if self.local_addr:
            args.append(f"--local-addr={self.local_addr}")
        args += ["-m", WORKER_MODULE, *self.worker_args]
        return f"{env} {' '.join(shlex.quote(a) for a in args)}"


def plan_launch(recipe: Recipe, recipe_path: str | Path, overrides: list[str]) -> LaunchPlan:
    """Compile a checked recipe into a launch. ValueError when the recipe cannot be served."""
    elastic = recipe.elastic
    min_nodes, max_nodes = parse_nnodes(elastic.nnodes)
    sizes = [n * elastic.nproc_per_node for n in range(min_nodes, max_nodes + 1)]
    batch_plans = tuple(plans_for_sizes(recipe.trainer, sizes))
    endpoint = elastic.rdzv.endpoint or LOCAL_ENDPOINT
    if max_nodes > 1 and not elastic.rdzv.endpoint:
        raise ValueError(
            "elastic.rdzv.endpoint: a job of more than one node needs a rendezvous endpoint "
            "every node can reach (--rdzv-endpoint HOST:PORT)"
        )
    return LaunchPlan(
        min_nodes=min_nodes,
        max_nodes=max_nodes,
        nproc_per_node=elastic.nproc_per_node,
        run_id=recipe.run_id,
        run_dir=RunDir.of(recipe.run.dir, recipe.run_id).path,
        rdzv_backend=f"elasticml-{elastic.rdzv.backend}",
        rdzv_endpoint=endpoint,
        rdzv_configs=_rdzv_configs(recipe),
        max_restarts=elastic.max_restarts,
        monitor_interval=0.1,
        env=_environment(recipe),
        worker_args=(str(Path(recipe_path).resolve()), *overrides),
        local_addr=elastic.local_addr,
        hang_timeout=elastic.hang_timeout,
        batch_plans=batch_plans,
    )


def _rdzv_configs(recipe: Recipe) -> dict[str, str]:
    rdzv = recipe.elastic.rdzv
    configs = {
        "join_timeout": _num(rdzv.join_timeout),
        "last_call_timeout": _num(rdzv.last_call),
        "regroup_wait": _num(rdzv.regroup_wait),
        "group_timeout": _num(rdzv.group_timeout),
        "training_hash": training_hash(recipe),
    }
    if rdzv.standalone_store:
        configs["is_host"] = "0"
    return configs


def _environment(recipe: Recipe) -> dict[str, str]:
    env = {}
    if not recipe.elastic.share_store:
        env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
    env["OMP_NUM_THREADS"] = str(threads_per_worker(recipe))
    return env


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
