"""How hard the rendezvous works its store: requests per second per node, and keys kept.

1. Steady state: N nodes (threads, each with its own handler and connections, as separate
   machines would have) form a group on a real c10d TCPStore and then "train" while torch's
   agent would ask `num_nodes_waiting()` every 0.1 s and the beat thread runs. Counts store
   requests per node per second, reads and writes apart.
2. Growth: a group of two takes a visitor in and lets it go again until 1,000 rounds have
   been decided (a simulated clock, the real store); prints the number of keys the store
   holds and their total size.

    PYTHONPATH=. python scripts/bench_store.py [--nodes 2] [--seconds 10] [--rounds 1000]
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections import Counter

from torch.distributed.elastic.rendezvous import RendezvousParameters

from elasticml.launch.kv import SealedKV, TCPStoreKV
from elasticml.launch.rendezvous import create_handler
from elasticml.launch.store import c10d_store

KEY = "bench-job-key-0123456789abcdef0123"


class Counted:
    """A KV that counts the store requests it makes (a TCPStoreKV `get` is two: check, get)."""

    def __init__(self, inner, counter: Counter) -> None:
        self.inner, self.counter = inner, counter

    def get(self, key):
        self.counter["read"] += 2
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
        return Counted(self.inner.clone(), self.counter)


def steady_state(nodes: int, seconds: float) -> None:
    host = c10d_store("127.0.0.1", 0, True, 30)
    counters = [Counter() for _ in range(nodes)]
    handlers = []
    for counter in counters:
        params = RendezvousParameters(
            backend="elasticml-c10d", endpoint=f"127.0.0.1:{host.store.port}", run_id="bench",
            min_nodes=nodes, max_nodes=nodes, local_addr="127.0.0.1", is_host="0",
            training_hash="h", nproc_per_node="1")
        handler = create_handler(params)
        node = handler.node
        node.kv = SealedKV(Counted(node.kv.inner, counter), KEY.encode())
        node.beat_kv = SealedKV(Counted(node.beat_kv.inner, counter), KEY.encode())
        handlers.append(handler)
    threads = [threading.Thread(target=h.next_rendezvous) for h in handlers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for counter in counters:
        counter.clear()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:  # torch's monitor loop, one per node
        for handler in handlers:
            handler.num_nodes_waiting()
        time.sleep(0.1)
    for handler in handlers:
        handler.shutdown()
    total = sum(counters, Counter())
    print(f"steady state, {nodes} nodes, {seconds:g} s: per node "
          f"{total['read'] / nodes / seconds:.1f} reads/s + "
          f"{total['write'] / nodes / seconds:.1f} writes/s (store requests)")


def growth(rounds: int) -> None:
    from tests.roundsim import Sim

    host = c10d_store("127.0.0.1", 0, True, 30)
    sim = Sim(1, 3)
    sim.store = TCPStoreKV(host.store, host.connect)

    def add_node():
        from elasticml.launch.records import Card
        from elasticml.launch.rounds import RoundNode
        from tests.roundsim import TERMS, SimNode

        name = f"n{len(sim.nodes)}"
        sim_node = SimNode(name, None)
        kv = SealedKV(TCPStoreKV(host.connect(), host.connect), KEY.encode())
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
    keys = host.store.num_keys()
    print(f"after {len(sim.decisions)} rounds ({time.perf_counter() - started:.0f} s): "
          f"{keys} keys in the store (a fixed ring of 8 rounds + 8 endings, 3 per generation, "
          f"one beat per live node, plus the store's own bookkeeping)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=1000)
    args = parser.parse_args()
    os.environ["ELASTICML_JOB_KEY"] = KEY
    steady_state(args.nodes, args.seconds)
    growth(args.rounds)


if __name__ == "__main__":
    main()
