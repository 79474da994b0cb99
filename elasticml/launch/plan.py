"""`LaunchPlan`: the single description of a launch, computed once from a recipe.

Two renderers read it and nothing else: `to_launch_config()` gives the
`torch.distributed.launcher.api.LaunchConfig` that `elasticml train` runs, and
`torchrun_command()` gives the equivalent shell line that `--dry-run` prints. Because both
come from the same value, the printed command runs the same job under plain `torchrun`.

Environment set for every agent and worker:
* `OMP_NUM_THREADS` = CPU cores // local workers: torch only sets 1, and only for nproc > 1.
* `TORCH_ELASTIC_WORKER_IDENTICAL=1`: every node runs the same number of workers (the
  rendezvous refuses a node that differs), so torch's agent computes global ranks from the
  round alone instead of exchanging them through the store after the round is decided.

Workers get the recipe and, after it, `--training-hash H`: the hash of the recipe the job
started with. A worker whose recipe hashes otherwise refuses to train (one line, exit status
`errors.WORKER_INPUT_ERROR_EXIT`), so a recipe file edited under a running job cannot change what
restarted workers train when they re-read it (the `--dry-run` line, under plain torchrun).
elasticml's own launch goes further: it pins the resolved recipe in the run dir
(`LaunchPlan.pinned`) and its workers read that copy.

Rendezvous backends are elasticml's own (`elasticml-c10d`, `elasticml-etcd`,
`elasticml-etcd-v2`), registered through torch's `torchrun.handlers` entry point, so
`torchrun` finds them too. They run `launch/rounds.py`: a lost node is noticed by its peers'
failed collectives (or its stopped beat), and a new round forms as soon as the group is back.

The job key (`jobkey.py`) and the etcd password are never part of the plan: a launch whose
rendezvous other machines can reach needs a job key in the environment (`ELASTICML_JOB_KEY`)
or in a file (`elastic.rdzv.job_key_file`, whose path alone is passed on); the etcd password
comes from `ELASTICML_ETCD_PASSWORD` or `elastic.rdzv.password_file` (a path).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field, replace
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
    collective_timeout: float = 30.0
    """Seconds a collective waits for a silent peer (the hang watchdog leaves such waits be)."""
    stop_grace: float = 45.0
    """Seconds between SIGTERM and SIGKILL when the agent stops its workers."""
    batch_plans: tuple[BatchPlan, ...] = field(default=())
    training_hash: str = ""
    """`recipe.load.training_hash` of the recipe the job started with."""
    warm_workers: bool = False
    """Workers are forked from a zygote (`launch/warm.py`), not started as interpreters."""

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

    def pinned(self, recipe_file: Path) -> LaunchPlan:
        """The same launch, its workers reading `recipe_file` (the resolved recipe, overrides
        and flags applied) instead of the user's file and overrides."""
        return replace(self, worker_args=(str(recipe_file), "--training-hash",
                                          self.training_hash))

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
    fingerprint = training_hash(recipe)
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
        worker_args=(str(Path(recipe_path).resolve()), "--training-hash", fingerprint,
                     *overrides),
        local_addr=elastic.local_addr,
        hang_timeout=elastic.hang_timeout,
        stop_grace=elastic.stop_grace,
        collective_timeout=elastic.collective_timeout,
        batch_plans=batch_plans,
        training_hash=fingerprint,
        warm_workers=elastic.warm_workers,
    )


def _rdzv_configs(recipe: Recipe) -> dict[str, str]:
    rdzv = recipe.elastic.rdzv
    configs = {
        "join_timeout": _num(rdzv.join_timeout),
        "last_call_timeout": _num(rdzv.last_call),
        "regroup_wait": _num(rdzv.regroup_wait),
        "group_timeout": _num(rdzv.group_timeout),
        "node_timeout": _num(rdzv.node_timeout),
        "training_hash": training_hash(recipe),
        "nproc_per_node": str(recipe.elastic.nproc_per_node),
        "length": training_length(recipe),
    }
    if rdzv.standalone_store:
        configs["is_host"] = "0"
    if recipe.faults.die_in_rendezvous:
        configs["fault"] = "die_in_rendezvous"
    if rdzv.job_key_file:
        configs["job_key_file"] = _path(rdzv.job_key_file)
    for field_name, conf_key in ETCD_CONF.items():
        value = getattr(rdzv, field_name)
        if value:
            configs[conf_key] = value if field_name == "user" else _path(value)
    return configs


def training_length(recipe: Recipe) -> str:
    """`steps:N` or `epochs:E`: what every node must agree on besides the recipe's hash
    (the hash leaves the length out, so that a finished run can be trained on)."""
    trainer = recipe.trainer
    return f"steps:{trainer.max_steps}" if trainer.max_steps else f"epochs:{trainer.epochs:g}"


ETCD_CONF = {"ca_cert": "ca_cert", "client_cert": "ssl_cert", "client_key": "ssl_cert_key",
             "user": "user", "password_file": "password_file"}
"""Recipe field -> rdzv-conf key for etcd (the TLS keys are torch's `etcd-v2` backend's)."""


def _path(value: str) -> str:
    return str(Path(value).expanduser().resolve())


def _environment(recipe: Recipe) -> dict[str, str]:
    return {"OMP_NUM_THREADS": str(threads_per_worker(recipe)),
            "TORCH_ELASTIC_WORKER_IDENTICAL": "1"}


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
