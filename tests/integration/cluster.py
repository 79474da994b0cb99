"""Helpers for the elasticity tests: run `elasticml` as real processes and end them for sure.

`Job` starts a command in its own session and, when the test is over, SIGKILLs it and every
process it started, found through /proc (torch elastic puts each worker in a session of its
own, so a process-group kill alone would leave workers behind). `Cluster` makes "nodes" out
of network namespaces joined by a bridge, each with its own 10.x address.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from elasticml.telemetry.events import read_events

REPO = Path(__file__).resolve().parents[2]
TINY = Path(__file__).with_name("tiny.yaml")
USER_CODE = Path(__file__).with_name("user_code.py")
OVERFIT = Path(__file__).with_name("overfit.yaml")


TEST_JOB_KEY = "elasticml-tests-" + "5" * 48
"""The job key every node of a test job shares (tests that need none or another say so)."""


def env_with_repo(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.setdefault("ELASTICML_JOB_KEY", TEST_JOB_KEY)
    env.update(extra)
    return env


def train_command(*args: str, recipe: Path = TINY) -> list[str]:
    return [sys.executable, "-m", "elasticml", "train", str(recipe), "-q", *args]


def with_model(folder: Path, model: dict, **sections) -> Path:
    """The tiny recipe with another `model` (and any other sections), written to
    `folder/recipe.yaml` beside a copy of `user_code.py`, whose components it may name."""
    import shutil

    import yaml

    recipe = yaml.safe_load(TINY.read_text())
    recipe["model"] = model
    for name, section in sections.items():
        if section is None:
            recipe.pop(name, None)
        else:
            recipe[name] = section
    shutil.copy(USER_CODE, folder / USER_CODE.name)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def overfit_recipe(folder: Path) -> Path:
    """overfit.yaml in `folder`, beside its data: noisy.npz, 300 rows of four Gaussian blobs
    in 8 dimensions, 30% of them relabelled at random."""
    import numpy as np

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 8)) * 1.5
    labels = rng.integers(0, 4, 300)
    features = centres[labels] + rng.normal(size=(300, 8))
    labels = np.where(rng.random(300) < 0.3, rng.integers(0, 4, 300), labels)
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "noisy.npz", x=features.astype("float32"), y=labels.astype("int64"))
    path = folder / "overfit.yaml"
    path.write_text(OVERFIT.read_text())
    return path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (children first found, grandchildren after)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            parents.setdefault(ppid, []).append(int(entry.name))
    found, queue = [], [pid]
    while queue:
        for child in parents.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def kill_tree(pid: int) -> None:
    """SIGKILL `pid` and everything below it, by pid."""
    for victim in [pid, *descendants(pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)


class Job:
    """One process (an agent, a store, etcd) with its output in a file."""

    def __init__(self, command: list[str], log: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.command, self.log = command, log
        log.parent.mkdir(parents=True, exist_ok=True)
        self._out = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(command, stdout=self._out, stderr=subprocess.STDOUT,
                                        env=env or env_with_repo(), cwd=cwd,
                                        start_new_session=True)

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):  # an agent prints its stacks
                os.kill(self.pid, signal.SIGUSR2)
                time.sleep(1)
            raise AssertionError(f"{self.command[:6]} still running after {timeout} s; "
                                 f"output:\n{self.output()[-3000:]}") from None

    def output(self) -> str:
        self._out.flush()
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            kill_tree(self.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(10)
        else:
            for orphan in descendants(self.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(orphan, signal.SIGKILL)
        self._out.close()


def assert_same_data(records: list[tuple[int, int, list[int]]], steps: int,
                     recipe: Path = TINY) -> None:
    """Every step was trained exactly once, on exactly the samples an undisturbed run uses
    (so each sample once per epoch), whatever the ranks that shared it."""
    by_step: dict[int, list[int]] = {}
    for step, _rank, ids in records:
        by_step.setdefault(step, []).extend(ids)
    assert sorted(by_step) == list(range(steps)), "every step trained, none twice"
    for step, expected in enumerate(expected_batches(steps, recipe)):
        assert sorted(by_step[step]) == sorted(expected), f"step {step} trained other samples"


def records_past_a_death(samples: Path, dead: set[int], resumed_step: int,
                         recipe: Path = TINY) -> list[tuple[int, int, list[int]]]:
    """The sample records that count when the workers with pids `dead` were killed at a moment
    the test did not choose and the job resumed at `resumed_step`.

    Theirs count up to that step (a step one of them finished after it is not in the state
    that goes on). And a worker may die after the last step's all-reduce (the others complete
    that step with its gradients) but before it writes the step's line: then its share is what
    the others' is not, provided the others trained only samples of that step."""
    records, dead_logged = [], set()
    for path in Path(samples).glob("samples-*.txt"):
        from_dead = int(path.stem.rsplit("-", 1)[1]) in dead
        for line in path.read_text().splitlines():
            step, rank, *ids = (int(n) for n in line.split())
            if not (from_dead and step >= resumed_step):
                records.append((step, rank, ids))
                if from_dead:
                    dead_logged.add(step)
    last = resumed_step - 1
    if last >= 0 and last not in dead_logged:
        expected = set(expected_batches(last + 1, recipe)[last])
        trained = {i for step, _, ids in records if step == last for i in ids}
        assert trained and trained < expected, f"step {last} trained other samples"
        records.append((last, -1, sorted(expected - trained)))
    return records


def expected_batches(steps: int, recipe: Path = TINY) -> list[list[int]]:
    """The sample ids an undisturbed run of `recipe` trains at each of its first `steps`."""
    from elasticml.data.sampler import ElasticSampler
    from elasticml.recipe.load import load_recipe
    from elasticml.tasks import build_task

    loaded = load_recipe(recipe, [])
    sampler = ElasticSampler(len(build_task(loaded).splits()["train"]), loaded.run.seed)
    return [sampler.next_batch(loaded.trainer.global_batch_size).tolist()
            for _ in range(steps)]


def run_events(run_root: Path, run_id: str = "tiny") -> list[dict]:
    return read_events(run_root / run_id / "events")


def of_kind(events: list[dict], kind: str, **match) -> list[dict]:
    return [e for e in events if e["kind"] == kind
            and all(e.get(k) == v for k, v in match.items())]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# --- network namespaces as nodes ----------------------------------------------------------


def netns_available() -> str | None:
    """None when namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return "needs iproute2 (`ip`)"
    probe = f"emlprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True)
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None if made.returncode == 0 else f"`ip netns add` failed: {made.stderr.decode()}"


_clusters = itertools.count()


def _free_tag() -> str:
    """A name part no namespace or link here uses yet: unique within this process by a
    counter (a random pick collided within one suite), and checked against what the kernel
    still holds, since a deleted namespace's links go away asynchronously."""
    for _ in range(100):
        tag = f"{os.getpid() % 10000:04d}{next(_clusters) % 100:02d}"
        taken = [p for p in (*Path("/run/netns").glob(f"eml{tag}n*"),
                             *Path("/sys/class/net").glob(f"em*{tag}*"))]
        if not taken:
            return tag
    raise RuntimeError("no free network namespace name left for this test process")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


class Cluster:
    """Nodes in network namespaces on one bridge; the host side of the bridge is `.254`."""

    IFNAME = "eml0"

    def __init__(self) -> None:
        tag = _free_tag()
        self.tag = tag
        self.subnet = f"10.{100 + int(tag[-2:])}.{os.getpid() % 250 + 1}"
        self.bridge = f"embr{tag}"
        self.host_addr = f"{self.subnet}.254"
        self.nodes: dict[str, str] = {}
        self._veths: dict[str, str] = {}
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.host_addr}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")

    def add_node(self) -> str:
        index = len(self.nodes) + 1
        name, veth = f"eml{self.tag}n{index}", f"emv{self.tag}n{index}"
        _ip("netns", "add", name)
        _ip("link", "add", veth, "type", "veth", "peer", "name", self.IFNAME, "netns", name)
        _ip("link", "set", veth, "master", self.bridge, "up")
        addr = f"{self.subnet}.{index}"
        _ip("-n", name, "addr", "add", f"{addr}/24", "dev", self.IFNAME)
        _ip("-n", name, "link", "set", self.IFNAME, "up")
        _ip("-n", name, "link", "set", "lo", "up")
        self.nodes[name], self._veths[name] = addr, veth
        return name

    def exec_prefix(self, node: str) -> list[str]:
        return ["ip", "netns", "exec", node]

    def node_env(self, **extra: str) -> dict[str, str]:
        return env_with_repo(GLOO_SOCKET_IFNAME=self.IFNAME, **extra)

    def pids(self, node: str) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", node], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def kill_node(self, node: str) -> None:
        """The whole node at once: every process in its namespace, by pid."""
        for pid in self.pids(node):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def partition(self, node: str) -> None:
        _ip("link", "set", self._veths[node], "down")

    def close(self) -> None:
        for node in self.nodes:
            self.kill_node(node)
            subprocess.run(["ip", "netns", "del", node], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)


class Nodes:
    """Agents of one job started in a cluster's namespaces, each with its own run dir (no
    shared filesystem), all ended by the test."""

    def __init__(self, cluster: Cluster, tmp_path: Path, endpoint: str, *common: str,
                 env: dict[str, str] | None = None, recipe: Path = TINY) -> None:
        self.cluster, self.tmp_path, self.endpoint = cluster, tmp_path, endpoint
        self.common, self.env, self.recipe = common, env or {}, recipe
        self.jobs: dict[str, Job] = {}
        self._done: list[Job] = []

    def start(self, *overrides: str) -> str:
        node = self.cluster.add_node()
        self.again(node, *overrides)
        return node

    def again(self, node: str, *overrides: str) -> Job:
        """Run the job's command (again) on `node`, with its own run dir as before."""
        addr = self.cluster.nodes[node]
        command = self.cluster.exec_prefix(node) + train_command(
            "--rdzv-endpoint", self.endpoint, "--local-addr", addr,
            "--run-dir", str(self.run_root(node)), *self.common, *overrides, recipe=self.recipe)
        if node in self.jobs:
            self._done.append(self.jobs[node])
        self.jobs[node] = Job(command, self.tmp_path / f"{node}.log",
                              env=self.cluster.node_env(**self.env), cwd=self.tmp_path)
        return self.jobs[node]

    def run_root(self, node: str) -> Path:
        return self.tmp_path / node / "runs"

    def events(self, node: str | None = None) -> list[dict]:
        nodes = [node] if node else list(self.jobs)
        merged = [e for n in nodes for e in run_events(self.run_root(n))]
        return sorted(merged, key=lambda e: e["t"])

    def stepping(self, node: str, at_least: int, world_size: int | None = None) -> dict:
        """Wait until `node` logged a step >= `at_least` (at `world_size`); that step event."""
        def ready():
            steps = of_kind(self.events(node), "step")
            if world_size is not None:
                steps = [e for e in steps if e["world_size"] == world_size]
            return steps and steps[-1]["step"] >= at_least and steps[-1]
        return wait_for(ready, 120, f"{node} to reach step {at_least}")

    def resumed(self, world_size: int, timeout: float = 180) -> dict:
        """Wait until some node's rank resumed training at `world_size`; that event."""
        def ready():
            return next((e for e in of_kind(self.events(), "resume")
                         if e["world_size"] == world_size), None)
        return wait_for(ready, timeout, f"the job to resume at world size {world_size}")

    def rank_zero_first(self, a: str, b: str) -> tuple[str, str]:
        """(the node training rank 0, the other one)."""
        leader = next(n for n in (a, b) if of_kind(self.events(n), "step", rank=0))
        return leader, b if leader == a else a

    def waiting(self, run_id: str = "tiny") -> list[str]:
        """Addresses of the nodes whose cards are in an open round of the job (read from the
        rendezvous store with the tests' job key)."""
        return cards_in_open_rounds(self.endpoint, run_id)

    def stop(self) -> None:
        for job in [*self._done, *self.jobs.values()]:
            job.stop()


def cards_in_open_rounds(endpoint: str, run_id: str) -> list[str]:
    from datetime import timedelta

    from torch.distributed import TCPStore

    from elasticml.launch.kv import SealedKV, TCPStoreKV
    from elasticml.launch.records import RING, Keys

    host, port = endpoint.rsplit(":", 1)
    kv = SealedKV(TCPStoreKV(TCPStore(host, int(port), None, False, timedelta(seconds=10))),
                  TEST_JOB_KEY.encode())
    keys = Keys(run_id)
    gen = kv.get(keys.gen)
    if gen is None:
        return []
    names = []
    for slot in range(RING):
        value = kv.get(keys.round(json.loads(gen)["g"], slot))
        if value is not None and json.loads(value)["open"]:
            names += [card["name"] for card in json.loads(value)["cards"]]
    return names
