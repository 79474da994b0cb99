"""The round protocol's view of a c10d `TCPStore`: reads never wait and never write."""

from __future__ import annotations

import time
from datetime import timedelta

from torch.distributed import TCPStore

from elasticml.launch.kv import TCPStoreKV


def _kv(timeout: float = 20.0) -> TCPStoreKV:
    store = TCPStore("127.0.0.1", 0, None, True, timedelta(seconds=timeout), wait_for_workers=False)
    return TCPStoreKV(store, timeout=timeout)


def test_a_missing_key_reads_as_none_at_once_and_is_not_created():
    kv = _kv()
    started = time.monotonic()
    assert kv.get("round/7") is None
    assert time.monotonic() - started < 5  # the store's timeout is 20 s
    assert not kv._store.check(["round/7"])


class _DeletedWhileRead:
    """A store on which another node deletes every key right after any "is it there?" answer:
    the interleaving in which a read made of `check` then `get` waits the whole timeout."""

    def __init__(self, store) -> None:
        self._store = store

    def check(self, keys):
        there = self._store.check(keys)
        for key in keys:
            self._store.delete_key(key)
        return there

    def __getattr__(self, name):
        return getattr(self._store, name)


def test_a_key_deleted_by_another_node_while_read_reads_as_none_or_its_value_at_once():
    store = TCPStore("127.0.0.1", 0, None, True, timedelta(seconds=20), wait_for_workers=False)
    kv = TCPStoreKV(_DeletedWhileRead(store), timeout=20)
    kv.set("round/1", b"card")
    started = time.monotonic()
    assert kv.get("round/1") in (b"card", None)
    assert kv.get("round/1") in (b"card", None)
    assert time.monotonic() - started < 5


def test_compare_and_set_still_creates_updates_and_refuses():
    kv = _kv()
    assert kv.compare_and_set("latest", None, b"1")
    assert not kv.compare_and_set("latest", None, b"2")
    assert kv.compare_and_set("latest", b"1", b"2") and kv.get("latest") == b"2"
