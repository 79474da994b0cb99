"""How hard the rendezvous works its store: requests per second per node, and what it keeps.

For each store (a c10d TCPStore, and etcd's v3 API):
1. Steady state: N nodes (threads, each with its own handler and connections, as separate
   machines would have) form a group and then "train" while torch's agent asks
   `num_nodes_waiting()` every 0.1 s and the beat thread runs. Counts store requests per node
   per second, reads and writes apart (a TCPStore read is two requests: check, get).
2. Growth: a group of two takes a visitor in and lets it go again until 1,000 rounds have
   been decided (a simulated clock, the real store); prints the keys the store holds and
   their total size. For etcd also its revision (one per write) and its database size
   before and after compacting the history, which etcd keeps until it is compacted (run etcd
   with `--auto-compaction-retention`).

etcd: an etcd 3.4+ at `--etcd HOST:PORT` (plain HTTP, no users), or, without it, one started
here on loopback from the `etcd` on PATH (v3 API only) and stopped at the end.

    PYTHONPATH=. python scripts/bench_store.py [--nodes 2] [--seconds 10] [--rounds 1000]
        [--stores c10d,etcd] [--etcd HOST:PORT]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from torch.distributed.elastic.rendezvous import RendezvousParameters

from elasticml.launch.kv import ClockedKV, SealedKV, TCPStoreKV
from elasticml.launch.rendezvous import create_handler
from elasticml.launch.store import c10d_store

KEY = "bench-job-key-0123456789abcdef0123"


class Counted:
    """A KV that counts the store requests it makes (`per_get`: requests one read takes)."""

    def __init__(self, inner, counter: Counter, per_get: int) -> None:
        self.inner, self.counter, self.per_get = inner, counter, per_get

    def get(self, key):
        self.counter["read"] += self.per_get
        return self.inner.get(key)

    def set(self, key, value):
        self.counter["write"] += 1
        return self.inner.set(key, value)

    def compare_and_set(self, key, expected, desired):
        self.counter["write"] += 1
        return self.inner.compare_and_set(key, expected, desired)

    def delete(self, keys):
        self.counter["write"] += len(keys)
        return self.inner.delete(keys)

    def delete_prefix(self, prefix):
        return self.inner.delete_prefix(prefix)

    def clone(self):
        return Counted(self.inner.clone(), self.counter, self.per_get)


class C10d:
    """A fresh c10d store for each phase (it cannot list keys by prefix)."""

    name, backend, per_get = "c10d TCPStore", "elasticml-c10d", 2

    def __init__(self) -> None:
        self.host = c10d_store("127.0.0.1", 0, True, 30)
        self.endpoint = f"127.0.0.1:{self.host.store.port}"

    def connect(self):
        return TCPStoreKV(self.host.connect(), self.host.connect)

    def fresh(self) -> C10d:
        return C10d()

    def history(self) -> None:
        return None  # a TCPStore keeps no history

    def describe(self) -> str:
        return (f"{self.host.store.num_keys()} keys in the store (a fixed ring of 8 rounds + 8 "
                "endings, 3 per generation, one beat per live node, plus the store's own "
                "bookkeeping)")

    def close(self) -> None:
        pass


class Etcd:
    name, backend, per_get = "etcd v3", "elasticml-etcd", 1

    def __init__(self, endpoint: str | None) -> None:
        self.server = None
        if endpoint is None:
            import shutil

            from tests.integration.etcd import EtcdServer

            if shutil.which("etcd") is None:
                raise SystemExit("no `etcd` on PATH (Debian: apt-get install etcd-server); or "
                                 "give --etcd HOST:PORT")
            self.server = EtcdServer(shutil.which("etcd"), Path(tempfile.mkdtemp()))
            endpoint = self.server.endpoint
        self.endpoint = endpoint

    def connect(self):
        from elasticml.launch.etcd_access import access_from_conf
        from elasticml.launch.etcd_kv import EtcdV3KV

        return EtcdV3KV(access_from_conf(self.endpoint, {}.get, {}))

    def fresh(self) -> Etcd:
        self.revision_at_start = int(self._status()["header"]["revision"])
        return self

    def history(self) -> tuple[int, int]:
        """(revision, bytes of the database in use, history included)."""
        status = self._status()
        return int(status["header"]["revision"]), int(status.get("dbSizeInUse",
                                                                 status["dbSize"]))

    def _status(self) -> dict:
        import requests

        return requests.post(f"http://{self.endpoint}/v3/maintenance/status", json={},
                             timeout=10).json()

    def describe(self) -> str:
        import requests

        contents = {k: v for k, v in self.connect().contents().items()
                    if k.startswith("/elasticml/growth/")}
        size = sum(len(k) + len(v) for k, v in contents.items())
        before = self._status()
        revision = int(before["header"]["revision"])
        requests.post(f"http://{self.endpoint}/v3/kv/compaction",
                      json={"revision": revision, "physical": True}, timeout=30)
        requests.post(f"http://{self.endpoint}/v3/maintenance/defragment", json={}, timeout=60)
        after = self._status()
        return (f"{len(contents)} keys of the run, {size} bytes of keys and values; "
                f"{revision - self.revision_at_start} revisions (one per write), database "
                f"{int(before['dbSize']) / 1e6:.1f} MB with the history, "
                f"{int(after['dbSize']) / 1e6:.2f} MB once compacted and defragmented")

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()


def steady_state(store, nodes: int, seconds: float) -> None:
    counters = [Counter() for _ in range(nodes)]
    handlers = []
    for counter in counters:
        params = RendezvousParameters(
            backend=store.backend, endpoint=store.endpoint, run_id="bench", min_nodes=nodes,
            max_nodes=nodes, local_addr="127.0.0.1", is_host="0", training_hash="h",
            nproc_per_node="1")
        handler = create_handler(params)
        handlers.append(handler)
        node = handler.node
        for name in ("kv", "beat_kv"):
            clocked = getattr(node, name).inner
            setattr(node, name, SealedKV(ClockedKV(Counted(clocked.inner, counter,
                                                           store.per_get), clocked.clock),
                                         KEY.encode()))
    threads = [threading.Thread(target=h.next_rendezvous) for h in handlers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for counter in counters:
        counter.clear()
    before = store.history()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:  # torch's monitor loop, one per node
        for handler in handlers:
            handler.num_nodes_waiting()
        time.sleep(0.1)
    for handler in handlers:
        handler.shutdown()
    after = store.history()
    total = sum(counters, Counter())
    print(f"{store.name}: steady state, {nodes} nodes, {seconds:g} s: per node "
          f"{total['read'] / nodes / seconds:.1f} reads/s + "
          f"{total['write'] / nodes / seconds:.1f} writes/s (store requests)")
    if before and after:
        hour = 3600 / seconds / nodes
        print(f"{store.name}: per node and hour of training, without compaction: "
              f"{(after[0] - before[0]) * hour:.0f} revisions, "
              f"{(after[1] - before[1]) * hour / 1e6:.2f} MB more history in use")


def growth(store, rounds: int) -> None:
    from elasticml.launch.records import Card
    from elasticml.launch.rounds import RoundNode
    from tests.roundsim import TERMS, Sim, SimNode

    sim = Sim(1, 3)
    sim.store = store.connect()

    def add_node():
        name = f"n{len(sim.nodes)}"
        sim_node = SimNode(name, None)
        kv = SealedKV(store.connect(), KEY.encode())
        sim_node.node = RoundNode(kv, "growth", TERMS, Card(f"{name}-{os.getpid()}", name,
                                  "127.0.0.1", 0, 1), 1, 3, sim.timings, sim.clock,
                                  lambda: 1, beat_kv=kv)
        sim.nodes.append(sim_node)
        return sim_node

    add_node(), add_node()
    sim.run(2)
    started = time.perf_counter()
    while len(sim.decisions) < rounds:
        visitor = add_node()
        sim.run(0.5)
        sim.leave(visitor)
        sim.run(0.5)
        sim.nodes.remove(visitor)
    print(f"{store.name}: after {len(sim.decisions)} rounds "
          f"({time.perf_counter() - started:.0f} s): {store.describe()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--stores", default="c10d,etcd")
    parser.add_argument("--etcd", default=None, help="HOST:PORT of an etcd to use")
    args = parser.parse_args()
    os.environ["ELASTICML_JOB_KEY"] = KEY
    for name in args.stores.split(","):
        store = C10d() if name == "c10d" else Etcd(args.etcd)
        try:
            steady_state(store, args.nodes, args.seconds)
            growth(store.fresh(), args.rounds)
        finally:
            store.close()


if __name__ == "__main__":
    main()
