"""torch's `dist.Store` over the protocol's stores, exercised over `MemoryKV`: what torch's
agent does with it (its exit barrier) and the `TCPStore` semantics it follows."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
import torch.distributed as dist
from torch.distributed import PrefixStore
from torch.distributed.elastic.utils.store import barrier

from elasticml.launch.kv import MemoryKV
from elasticml.launch.kvstore import KVStore


def test_torchs_exit_barrier_lets_every_agent_through_once_all_arrive():
    kv = MemoryKV()
    stores = [KVStore(kv.clone(), timeout=30) for _ in range(3)]  # kept: torch holds no ref
    prefixed = [PrefixStore("/elasticml/job/g0/r0/", store) for store in stores]
    passed = []
    threads = [threading.Thread(target=lambda s=s: (barrier(s, 3, "terminal_state", 30),
                                                    passed.append(1))) for s in prefixed]
    for thread in threads[:2]:
        thread.start()
    for thread in threads[:2]:
        thread.join(0.2)
    assert not passed, "two of three arrived: nobody passes yet"
    threads[2].start()
    for thread in threads:
        thread.join(30)
    assert len(passed) == 3
    assert all(key.startswith("/elasticml/job/g0/r0/") for key in kv.data)


def test_a_barrier_that_is_not_reached_times_out_with_torchs_error():
    store = KVStore(MemoryKV())
    with pytest.raises(dist.DistStoreError, match="timed out"):
        barrier(PrefixStore("p", store), 2, "b", barrier_timeout=0.2)


def test_add_counts_from_zero_and_concurrent_adds_lose_nothing():
    kv = MemoryKV()
    stores = [KVStore(kv.clone()) for _ in range(4)]
    threads = [threading.Thread(target=lambda s=s: [s.add("n", 1) for _ in range(50)])
               for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert stores[0].add("n", 0) == 200 and stores[0].get("n") == b"200"


def test_get_waits_for_the_key_and_gives_up_after_the_timeout():
    store = KVStore(MemoryKV(), timeout=5)
    later = threading.Timer(0.1, store.set, args=("k", "v"))
    later.start()
    assert store.get("k") == b"v"
    store.set_timeout(timedelta(seconds=0.1))
    with pytest.raises(dist.DistStoreError, match="missing"):
        store.get("missing")
    with pytest.raises(dist.DistStoreError):
        store.wait(["k", "missing"], timedelta(seconds=0.1))
    store.wait(["k"], timedelta(seconds=0.1))


def test_compare_set_check_and_delete_follow_tcpstore():
    store = KVStore(MemoryKV())
    assert store.compare_set("k", "", "first") == b"first", "empty expected: when missing"
    assert store.compare_set("k", "", "again") == b"first"
    assert store.compare_set("k", "nope", "x") == b"first"
    assert store.compare_set("k", "first", "second") == b"second"
    assert store.compare_set("gone", "expected", "x") == b"expected"
    assert store.check(["k"]) and not store.check(["k", "gone"])
    store.multi_set(["a", "b"], [b"1", "2"])
    assert store.multi_get(["a", "b"]) == [b"1", b"2"]
    prefixed = PrefixStore("p", store)
    prefixed.set("x", "1")
    assert prefixed.delete_key("x") and not prefixed.delete_key("x")
