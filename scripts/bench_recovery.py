"""Recovery benchmark: the same small job under plain torchrun and under elasticml, in one run.

    PYTHONPATH=. python scripts/bench_recovery.py [--repeat 10] [--scenarios crash,loss,join,launch]
        [--launchers torchrun,elasticml-cold,elasticml] [--json out.json]

Scenarios (nodes are network namespaces on one bridge, so `loss` and `join` need root):
* crash:  SIGKILL of local rank 1 (2 workers, 1 node) -> first step after the restart;
* loss:   2 nodes x 1 worker, the node of rank 0 SIGKILLed whole -> first step at world size 1;
* join:   1 node training, a second started -> first step at world size 2, and the training
  gap (last step at the old size -> first step at the new one);
* launch: `elasticml train` (1 node, 2 workers) -> its first training step, against
  `torchrun --standalone` running the same job.
Launchers: `torchrun` is the job's `--dry-run` line under plain torchrun, with torch's stock
`c10d` handler in place of elasticml's (last call 1 s, its minimum; for `loss`, heartbeats
tuned to its floor, 1 s x 2, see torchrun-facts; for `join` the default heartbeats: at the
floor a loaded node misses beats and a joining node forms a group of its own) and the
shared-store fix, or `--standalone` for `launch`. `elasticml-cold` is elasticml with
`elastic.warm_workers=false` (every worker a fresh interpreter, as torchrun starts them);
`elasticml` is the default, workers forked from a zygote. All three run elasticml's worker, so
steps lost are the worker's (0 everywhere). Runs alternate between the launchers (A B C A B C
...) so that a machine whose load drifts affects them alike. Times come from the event log
(events carry wall-clock stamps); each cell is min / median / max over the runs that
recovered, and the ratio column divides the elasticml median by the torchrun one.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
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
COLD = ("elastic.warm_workers=false",)
LAUNCHERS = ("torchrun", "elasticml-cold", "elasticml")

STOCK_CONF = "join_timeout=600,last_call_timeout=1"
"""torch's stock handler reads whole seconds and none of elasticml's keys: its best setting."""
TUNED_CONF = STOCK_CONF + ",keep_alive_interval=1,keep_alive_max_attempt=2"
"""Heartbeats at the floor the stock handler takes: a lost node is declared after ~2 s."""
RDZV_FLAGS = ("--rdzv-backend=", "--rdzv-endpoint=", "--rdzv-id=", "--rdzv-conf=")


def dry_run_line(*args: str) -> list[str]:
    """The words of the job's `--dry-run` torchrun line, from `torchrun` on."""
    dry = Job([*train_command(*args), "--dry-run"], Path(tempfile.mkdtemp()) / "dry.log")
    dry.wait(60)
    line = next((x for x in dry.output().splitlines()
                 if not x.startswith("#") and " torchrun " in f" {x} "), None)
    if line is None:
        raise SystemExit(f"no torchrun line in the dry run:\n{dry.output()[-2000:]}")
    words = shlex.split(line)
    return words[words.index("torchrun"):]


def torchrun_args(*args: str, conf: str = STOCK_CONF) -> list[str]:
    """The `--dry-run` torchrun line of the same job, with torch's stock c10d handler."""
    words = [w.replace("--rdzv-backend=elasticml-c10d", "--rdzv-backend=c10d")
             for w in dry_run_line(*args)]
    words = [f"--rdzv-conf={conf}" if w.startswith("--rdzv-conf=") else w for w in words]
    return [sys.executable, "-m", "torch.distributed.run", *words[1:]]


def standalone_args(*args: str) -> list[str]:
    """The `--dry-run` torchrun line of the same one-node job, as `torchrun --standalone`."""
    words = [w for w in dry_run_line(*args)[1:] if not w.startswith(RDZV_FLAGS)]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", *words]


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


class TunedTorchrunNodes(TorchrunNodes):
    conf = TUNED_CONF


def _one_node(launcher: str, *args: str, standalone: bool = False) -> list[str]:
    """The command of a one-node job under `launcher`."""
    if launcher == "torchrun":
        return standalone_args(*args) if standalone else torchrun_args(*args)
    return train_command(*args, *(COLD if launcher == "elasticml-cold" else ()))


def _run(command: list[str], work: Path) -> Job:
    env = env_with_repo(TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1", OMP_NUM_THREADS="1")
    return Job(command, work / "job.log", env=env, cwd=work)


def crash(launcher: str, work: Path) -> dict:
    job = _run(_one_node(launcher, "--run-dir", str(work / "runs"), *COMMON,
                         "faults.kill_rank=1", "faults.kill_step=40"), work)
    try:
        assert job.wait(300) == 0, job.output()[-2000:]
    finally:
        job.stop()
    events = run_events(work / "runs")
    [fault] = of_kind(events, "fault")
    after = [e for e in of_kind(events, "step") if e["t"] > fault["t"]]
    resumed = of_kind(events, "resume", restart_count=1)
    return {"seconds": after[0]["t"] - fault["t"], "lost": resumed[0]["steps_lost"]}


def launch(launcher: str, work: Path) -> dict:
    command = _one_node(launcher, "--run-dir", str(work / "runs"), "trainer.max_steps=5",
                        standalone=True)
    started = time.time()
    job = _run(command, work)
    try:
        assert job.wait(300) == 0, job.output()[-2000:]
    finally:
        job.stop()
    first = min(e["t"] for e in of_kind(run_events(work / "runs"), "step"))
    return {"seconds": first - started, "lost": 0}


@contextlib.contextmanager
def _cluster_job(launcher: str, work: Path, tuned: bool = False):
    """Network-namespace nodes around a standalone rendezvous store on the host side."""
    cluster = Cluster()
    store = None
    try:
        port = free_port(cluster.host_addr)
        store = Job([*train_command()[:3], "rendezvous", "serve", "--host", cluster.host_addr,
                     "--port", str(port)], work / "store.log")
        kind = Nodes if launcher.startswith("elasticml") else (
            TunedTorchrunNodes if tuned else TorchrunNodes)
        extra = COLD if launcher == "elasticml-cold" else ()
        nodes = kind(cluster, work, f"{cluster.host_addr}:{port}", "--nnodes", "1:2",
                     "--nproc-per-node", "1", *COMMON, "elastic.rdzv.standalone_store=true",
                     *extra)
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
        leader, survivor = nodes.rank_zero_first(a, b)
        killed_at = time.time()
        cluster.kill_node(leader)
        assert nodes.jobs[survivor].wait(300) == 0, nodes.jobs[survivor].output()[-2000:]
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
            assert job.wait(300) == 0, job.output()[-2000:]
    steps = of_kind(nodes.events(first), "step")
    last_small = max(e["t"] for e in steps if e["world_size"] == 1)
    first_big = min(e["t"] for e in steps if e["world_size"] == 2)
    resumed = [e for e in of_kind(nodes.events(), "resume") if e["world_size"] == 2]
    return {"seconds": first_big - started, "gap": first_big - last_small,
            "lost": max(e["steps_lost"] for e in resumed)}


SCENARIOS = {"crash": crash, "loss": loss, "join": join, "launch": launch}


def measure(name: str, launchers: list[str], repeat: int) -> dict[str, dict]:
    """Every launcher `repeat` times, in alternation; per launcher its runs and failures."""
    results = {launcher: {"runs": [], "failed": 0} for launcher in launchers}
    for index in range(repeat):
        for launcher in launchers:
            print(f"{name} {index + 1}/{repeat} {launcher}", file=sys.stderr, flush=True)
            with tempfile.TemporaryDirectory() as work:
                try:
                    results[launcher]["runs"].append(SCENARIOS[name](launcher, Path(work)))
                except AssertionError as error:  # the job did not recover: count it
                    results[launcher]["failed"] += 1
                    print(f"{name}/{launcher}: did not recover: {str(error)[:300]}",
                          file=sys.stderr)
    return results


def spread(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"{min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f}"


def table(rows: dict[str, dict[str, dict]], launchers: list[str]) -> str:
    lines = ["| scenario | measure | " + " | ".join(launchers) + " | elasticml / torchrun |",
             "|---|---|" + "---|" * (len(launchers) + 1)]
    for name, results in rows.items():
        keys = sorted({k for r in results.values() for run in r["runs"] for k in run} - {"lost"})
        for key in keys:
            values = {launcher: [run[key] for run in results[launcher]["runs"]]
                      for launcher in launchers}
            ratio = ""
            if values.get("elasticml") and values.get("torchrun"):
                ratio = statistics.median(values["elasticml"]) / statistics.median(
                    values["torchrun"])
                ratio = f"{ratio:.2f}"
            cells = " | ".join(spread(values[launcher]) for launcher in launchers)
            lines.append(f"| {name} | {key}, s (min / median / max) | {cells} | {ratio} |")
        outcome = " | ".join(
            f"{len(r['runs'])}/{len(r['runs']) + r['failed']}, lost "
            f"{max((run['lost'] for run in r['runs']), default='n/a')}"
            for r in (results[launcher] for launcher in launchers))
        lines.append(f"| {name} | recovered, steps lost | {outcome} | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--scenarios", default="crash,loss,join,launch")
    parser.add_argument("--launchers", default=",".join(LAUNCHERS))
    parser.add_argument("--json", help="also write every run's figures to this file")
    options = parser.parse_args()
    launchers = options.launchers.split(",")
    rows = {name: measure(name, launchers, options.repeat)
            for name in options.scenarios.split(",")}
    print(table(rows, launchers))
    if options.json:
        Path(options.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
