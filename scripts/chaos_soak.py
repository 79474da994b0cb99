"""Chaos soak: one elastic job on network-namespace nodes while mixed failures rain on it.

    PYTHONPATH=. python scripts/chaos_soak.py [--events 50] [--hog] [--seed 0]

Up to five nodes take turns in a `--nnodes 1:2` job (so there is usually a spare) around a
standalone rendezvous store. Every few seconds one of these happens to a random node:
worker SIGKILL, whole-node kill (every process of its namespace), a new node joining, a node
that dies in the middle of its rendezvous, Ctrl-C during a rendezvous, SIGTERM (a
preemption), and more nodes than `max_nodes`. Lost and stopped nodes are started again later
with the same command and their own run dir (no shared disk). With `--hog` a CPU-bound
process competes for the cores the whole time. The destructive events (kills, SIGTERM) hit a
member only while two members train and the last one has been recovered from, so a replica
always survives: every step lost is then a defect.

At the end the job must finish; the script reports jobs lost (goal 0), steps lost (goal 0
wherever a replica survived), the events by kind, and how far the final parameters are from
an undisturbed run of the same recipe (same math: the fixed global batch keeps every world
size on one trajectory; float summation order is the only difference).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.integration.cluster import (  # noqa: E402 - the helpers the tests use
    Cluster,
    Job,
    Nodes,
    descendants,
    free_port,
    of_kind,
    train_command,
    wait_for,
)

STEPS = 12000
COMMON = ("--nnodes", "1:2", "--nproc-per-node", "1", f"trainer.max_steps={STEPS}",
          "faults.step_delay=0.02", "trainer.checkpoint_every=50", "elastic.max_restarts=1000",
          "elastic.collective_timeout=10", "elastic.stop_grace=20",
          "elastic.rdzv.standalone_store=true", "trainer.eval_every=0")
KINDS = ("worker_kill", "node_kill", "join", "die_in_rendezvous", "ctrl_c_in_rendezvous",
         "sigterm", "node_too_many")


class Soak:
    def __init__(self, work: Path, seed: int) -> None:
        self.work, self.random = work, random.Random(seed)
        self.cluster = Cluster()
        port = free_port(self.cluster.host_addr)
        self.store = Job([*train_command()[:3], "rendezvous", "serve", "--host",
                          self.cluster.host_addr, "--port", str(port)], work / "store.log")
        wait_for(lambda: "serving" in self.store.output(), 30, "the store")
        self.nodes = Nodes(self.cluster, work, f"{self.cluster.host_addr}:{port}", *COMMON)
        self.down: list[str] = []
        """Nodes whose processes are gone (killed, stopped); started again later."""
        self.done: Counter = Counter()
        self.destroyed_at = 0.0

    def alive(self) -> list[str]:
        return [n for n, job in self.nodes.jobs.items() if job.process.poll() is None]

    def training(self) -> bool:
        return any(of_kind(self.nodes.events(n), "step") for n in self.alive())

    # --- what happens to nodes -------------------------------------------------------

    def members(self) -> list[str]:
        """The two nodes of the group training now, once both have trained a step in their
        current round (so both hold the newest state) after the last destructive event;
        else []."""
        trained = {}
        for node in self.alive():
            events = self.nodes.events(node)
            rounds, steps = of_kind(events, "rendezvous"), of_kind(events, "step")
            if not rounds or not steps:
                continue
            if steps[-1]["t"] > max(rounds[-1]["t"], self.destroyed_at) and \
                    steps[-1]["world_size"] == 2:
                trained[node] = tuple(sorted(m["node"] for m in rounds[-1]["members"] or []))
        groups = set(trained.values())
        return list(trained) if len(trained) == 2 and len(groups) == 1 else []

    def inject(self) -> str | None:
        """One event of a kind that can happen now (kinds tried in random order); None when
        none can (every slot taken and no group to hit)."""
        for kind in self.random.sample(KINDS, len(KINDS)):
            if self._happen(kind):
                self.done[kind] += 1
                return kind
        return None

    def _happen(self, kind: str) -> bool:
        members = self.members()
        if kind in ("worker_kill", "node_kill", "sigterm"):
            if not members:
                return False  # keep a replica: steps lost only count where one survived
            victim = self.random.choice(members)
            if kind == "worker_kill":
                workers = [p for p in descendants(self.nodes.jobs[victim].pid) if _is_worker(p)]
                if not workers:
                    return False
                os.kill(self.random.choice(workers), signal.SIGKILL)
            elif kind == "node_kill":
                self.cluster.kill_node(victim)
                self.down.append(victim)
            else:
                os.kill(self.nodes.jobs[victim].pid, signal.SIGTERM)
                self.down.append(victim)
            self.destroyed_at = time.time()
            return True
        if kind in ("join", "node_too_many"):
            return any([self._start() for _ in range(1 if kind == "join" else 2)])
        node = self._start("faults.die_in_rendezvous=true" if kind == "die_in_rendezvous"
                           else "")
        if node is None:
            return False
        if kind == "ctrl_c_in_rendezvous":
            time.sleep(self.random.uniform(0.3, 1.5))
            if self.nodes.jobs[node].process.poll() is None:
                os.kill(self.nodes.jobs[node].pid, signal.SIGINT)
        self.down.append(node)
        return True

    def _start(self, *overrides: str) -> str | None:
        """A node that is down comes back (same run dir), else a new one (at most 5)."""
        overrides = tuple(o for o in overrides if o)
        gone = [n for n in self.down if self.nodes.jobs[n].process.poll() is not None]
        if gone:
            self.down.remove(gone[0])
            self.nodes.again(gone[0], *overrides)
            return gone[0]
        if len(self.nodes.jobs) < 5:
            return self.nodes.start(*overrides)
        return None

    def finish(self) -> dict:
        """Nodes that are down come back for the end; every node's last run must then exit
        0 (a member with the finished job, a spare with "finished without this node"), also
        when it ended before this was called."""
        for node in list(self.down):
            job = self.nodes.jobs[node]
            job.wait(120)  # a node stopping after SIGTERM saves first
            self.down.remove(node)
            self.nodes.again(node)
        return {node: job.wait(900) for node, job in self.nodes.jobs.items()}

    def close(self) -> None:
        self.nodes.stop()
        self.store.stop()
        self.cluster.close()


def _is_worker(pid: int) -> bool:
    """A cold worker by its command line, a warm one (a fork of the zygote) by its name."""
    try:
        return (b"elasticml.train.worker" in Path(f"/proc/{pid}/cmdline").read_bytes()
                or Path(f"/proc/{pid}/comm").read_text().startswith("eml-worker"))
    except OSError:
        return False


def final_parameters(run_root: Path):
    from elasticml.train.checkpoint import CheckpointManager

    newest = CheckpointManager(run_root / "tiny" / "checkpoints").newest()
    return (None, None) if newest is None else (newest[0], newest[1]["model"])


def undisturbed(work: Path):
    same = [a for a in COMMON[4:] if not a.startswith("elastic.rdzv.")]
    job = Job(train_command("--run-dir", str(work / "calm"), *same), work / "calm.log")
    try:
        job.wait(900)
    finally:
        job.stop()
    return final_parameters(work / "calm")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50)
    parser.add_argument("--every", type=float, default=4.0, help="seconds between events")
    parser.add_argument("--hog", action="store_true", help="a CPU-bound process competes")
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="chaos-"))
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if options.hog else None
    soak = Soak(work, options.seed)
    started = time.time()
    try:
        soak.nodes.start(), soak.nodes.start()
        wait_for(soak.training, 120, "the job to train")
        for index in range(options.events):
            time.sleep(soak.random.uniform(0.5, 2 * options.every))
            if of_kind(soak.nodes.events(), "done"):
                print("the job finished before all events were injected", flush=True)
                break
            kind = soak.inject()
            print(f"{time.time() - started:7.1f} s  event {index + 1:>3}: {kind or 'none'}",
                  flush=True)
            if not soak.alive():
                soak._start()
        exits = soak.finish()
        events = soak.nodes.events()
        done = [e for e in of_kind(events, "done") if e["step"] == STEPS]
        lost = [e["steps_lost"] for e in of_kind(events, "resume") if e["steps_lost"]]
        finishers = [n for n, code in exits.items() if code == 0]
        print(f"\nevents: {dict(soak.done)}  ({sum(soak.done.values())} in "
              f"{time.time() - started:.0f} s)")
        print(f"job lost: {0 if done and finishers else 1}   exits of the last nodes: {exits}")
        print(f"steps lost in resumes: {sum(lost)} ({len(lost)} resumes behind)")
        print(f"restarts: {len(of_kind(events, 'restart'))}, failures: "
              f"{len(of_kind(events, 'worker_failed'))}")
        # every node keeps its own disk: the final state is on the node(s) that saved it
        saved = [final_parameters(soak.nodes.run_root(n)) for n in exits]
        final = [(step, params) for step, params in saved if step == STEPS]
        if final:
            step, params = final[0]
            calm_step, calm = undisturbed(work)
            worst = max(float((params[k] - calm[k]).abs().max()) for k in calm)
            print(f"final parameters vs an undisturbed run (step {step} vs {calm_step}): "
                  f"max |difference| {worst:.2e}")
    finally:
        soak.close()
        if hog is not None:
            hog.kill()
        print(f"work dir: {work}")


if __name__ == "__main__":
    main()
