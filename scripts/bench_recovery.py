"""Recovery benchmark: the same small job under plain torchrun and under elasticml.

    PYTHONPATH=. python scripts/bench_recovery.py [--repeat 3] [--scenarios crash,loss,join]

Scenarios (nodes are network namespaces on one bridge, so `loss` and `join` need root):
* crash: SIGKILL of local rank 1 (2 workers, 1 node) -> first step after the restart;
* loss:  2 nodes x 1 worker, the node of rank 0 SIGKILLed whole -> first step at world size 1;
* join:  1 node training, a second started -> first step at world size 2, and the training gap
  (last step at the old size -> first step at the new one).
Both launchers run elasticml's worker (so steps lost are the worker's, 0 for both); they
differ in the agent and the rendezvous: torchrun uses torch's stock `c10d` handler (the
`--dry-run` line with the backend swapped: last call 1 s, its minimum; for `loss` and `join`
heartbeats tuned to its floor, 1 s x 2, see torchrun-facts) and the shared-store fix;
elasticml uses its own round protocol (`launch/rounds.py`), hang watchdog and, like torchrun
here, a standalone store. Times come from the event log (step events carry wall-clock
stamps).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.integration.cluster import (  # noqa: E402 - the helpers the tests use
    Cluster,
    Job,
    Nodes,
    env_with_repo,
    free_port,
    of_kind,
    run_events,
    train_command,
    wait_for,
)

COMMON = ("trainer.max_steps=150", "faults.step_delay=0.05", "trainer.checkpoint_every=20")


STOCK_CONF = "join_timeout=600,last_call_timeout=1"
"""torch's stock handler reads whole seconds and none of elasticml's keys: its best setting."""
TUNED_CONF = STOCK_CONF + ",keep_alive_interval=1,keep_alive_max_attempt=2"
"""Heartbeats at the floor the stock handler takes: a lost node is declared after ~2 s. For
joins the default heartbeats (5 s x 3) are kept: at the floor a node under load misses its
beats and a joining node forms a second group of its own (seen here)."""


def torchrun_args(*args: str, conf: str = STOCK_CONF) -> list[str]:
    """The `--dry-run` torchrun line of the same job, with torch's stock c10d handler."""
    import shlex

    dry = Job([*train_command(*args), "--dry-run"], Path(tempfile.mkdtemp()) / "dry.log")
    dry.wait(60)
    line = next((x for x in dry.output().splitlines() if " torchrun " in f" {x} "), None)
    if line is None:
        raise SystemExit(f"no torchrun line in the dry run:\n{dry.output()[-2000:]}")
    words = shlex.split(line)
    words = words[words.index("torchrun"):]
    words = [w.replace("--rdzv-backend=elasticml-c10d", "--rdzv-backend=c10d") for w in words]
    words = [f"--rdzv-conf={conf}" if w.startswith("--rdzv-conf=") else w for w in words]
    return [sys.executable, "-m", "torch.distributed.run", *words[1:]]


class TorchrunNodes(Nodes):
    """The same nodes, each running the job's `--dry-run` line under plain torchrun."""

    conf = STOCK_CONF

    def again(self, node: str, *overrides: str) -> Job:
        addr = self.cluster.nodes[node]
        args = ("--rdzv-endpoint", self.endpoint, "--local-addr", addr,
                "--run-dir", str(self.run_root(node)), *self.common, *overrides)
        command = self.cluster.exec_prefix(node) + torchrun_args(
            *args, conf=self.conf + ",is_host=0")
        env = self.cluster.node_env(TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1", **self.env)
        self.jobs[node] = Job(command, self.tmp_path / f"{node}.log", env=env,
                              cwd=self.tmp_path)
        return self.jobs[node]


def crash(launcher: str, work: Path) -> dict:
    args = ("--run-dir", str(work / "runs"), *COMMON, "faults.kill_rank=1", "faults.kill_step=40")
    command = train_command(*args) if launcher == "elasticml" else torchrun_args(*args)
    env = env_with_repo(TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1", OMP_NUM_THREADS="1")
    job = Job(command, work / "job.log", env=env, cwd=work)
    try:
        job.wait(300)
    finally:
        job.stop()
    events = run_events(work / "runs")
    [fault] = of_kind(events, "fault")
    after = [e for e in of_kind(events, "step") if e["t"] > fault["t"]]
    resumed = of_kind(events, "resume", restart_count=1)
    return {"seconds": after[0]["t"] - fault["t"], "lost": resumed[0]["steps_lost"]}


class TunedTorchrunNodes(TorchrunNodes):
    conf = TUNED_CONF


@contextlib.contextmanager
def _cluster_job(launcher: str, work: Path, tuned: bool = False):
    """Network-namespace nodes around a standalone rendezvous store on the host side."""
    cluster = Cluster()
    store = None
    try:
        port = free_port(cluster.host_addr)
        store = Job([*train_command()[:3], "rendezvous", "serve", "--host", cluster.host_addr,
                     "--port", str(port)], work / "store.log")
        kind = Nodes if launcher == "elasticml" else (
            TunedTorchrunNodes if tuned else TorchrunNodes)
        nodes = kind(cluster, work, f"{cluster.host_addr}:{port}", "--nnodes", "1:2",
                     "--nproc-per-node", "1", *COMMON, "elastic.rdzv.standalone_store=true")
        try:
            yield cluster, nodes
        finally:
            nodes.stop()
    finally:
        if store:
            store.stop()
        cluster.close()


def loss(launcher: str, work: Path) -> dict:
    with _cluster_job(launcher, work, tuned=True) as (cluster, nodes):
        a, b = nodes.start(), nodes.start()
        wait_for(lambda: [e for e in of_kind(nodes.events(a), "step")
                          if e["world_size"] == 2 and e["step"] >= 20], 120, "world 2")
        leader = next(n for n in (a, b) if of_kind(nodes.events(n), "step", rank=0))
        survivor = b if leader == a else a
        killed_at = time.time()
        cluster.kill_node(leader)
        nodes.jobs[survivor].wait(300)
    events = nodes.events(survivor)
    after = [e for e in of_kind(events, "step") if e["world_size"] == 1]
    [resumed] = [e for e in of_kind(events, "resume") if e["world_size"] == 1]
    return {"seconds": after[0]["t"] - killed_at, "lost": resumed["steps_lost"]}


def join(launcher: str, work: Path) -> dict:
    with _cluster_job(launcher, work) as (_, nodes):
        first = nodes.start()
        wait_for(lambda: [e for e in of_kind(nodes.events(first), "step")
                          if e["step"] >= 10], 120, "first node training")
        started = time.time()
        nodes.start()
        for job in nodes.jobs.values():
            job.wait(300)
    steps = of_kind(nodes.events(first), "step")
    last_small = max(e["t"] for e in steps if e["world_size"] == 1)
    first_big = min(e["t"] for e in steps if e["world_size"] == 2)
    resumed = [e for e in of_kind(nodes.events(), "resume") if e["world_size"] == 2]
    return {"seconds": first_big - started, "gap": first_big - last_small,
            "lost": max(e["steps_lost"] for e in resumed)}


SCENARIOS = {"crash": crash, "loss": loss, "join": join}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scenarios", default="crash,loss,join")
    parser.add_argument("--launchers", default="torchrun,elasticml")
    options = parser.parse_args()
    rows, outcomes = [], {}
    for name in options.scenarios.split(","):
        results = {}
        for launcher in options.launchers.split(","):
            runs, failed = [], 0
            for _ in range(options.repeat):
                with tempfile.TemporaryDirectory() as work:
                    try:
                        runs.append(SCENARIOS[name](launcher, Path(work)))
                    except SystemExit as skipped:
                        print(f"{name}/{launcher}: {skipped}", file=sys.stderr)
                        break
                    except AssertionError as error:  # the job did not recover: count it
                        failed += 1
                        print(f"{name}/{launcher}: did not recover: {str(error)[:300]}",
                              file=sys.stderr)
            results[launcher] = runs
            outcomes[(name, launcher)] = f"{len(runs)}/{len(runs) + failed}"
        rows.append((name, results))
    print("| scenario | measure | " + " | ".join(options.launchers.split(",")) + " | ratio |")
    print("|---|---|" + "---|" * (len(options.launchers.split(",")) + 1))
    for name, results in rows:
        keys = sorted({k for runs in results.values() for run in runs for k in run})
        for key in keys:
            cells = []
            for launcher in options.launchers.split(","):
                values = [run[key] for run in results.get(launcher, [])]
                cells.append(statistics.median(values) if values else None)
            ratio = (f"{cells[0] / cells[-1]:.2f}x" if len(cells) > 1 and cells[0] and cells[-1]
                     else "")
            shown = " | ".join("n/a" if c is None else f"{c:.2f}" for c in cells)
            print(f"| {name} | {key} | {shown} | {ratio} |")
        recovered = " | ".join(outcomes.get((name, launcher), "n/a")
                               for launcher in options.launchers.split(","))
        print(f"| {name} | recovered | {recovered} | |")


if __name__ == "__main__":
    main()
