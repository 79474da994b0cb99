"""A torch `dist.Store` over any of the protocol's stores (`kv.py`), for torch's agent.

torch's elastic agent wants a `dist.Store` from the rendezvous for its exit barrier
(`torch.distributed.elastic.utils.store.barrier`: `add`, `set`, `wait`, `get`). Where the
rendezvous store is not a c10d store (etcd's v3 API), this one gives it those operations
over the five a `KV` has:
* `get` and `wait` poll until the key exists or the store's timeout passes (then torch's
  own `DistStoreError`, as a `TCPStore` raises);
* `add` is a compare-and-set loop over the number as decimal text (what a `TCPStore` keeps);
* `compare_set` follows `TCPStore`: an empty `expected` means "the key is missing".
Values are not signed with the job key: the barrier only lets agents leave, and the store
behind it (etcd with TLS and a user) decides who may write.
"""

from __future__ import annotations

import time
from datetime import timedelta

import torch.distributed as dist

from elasticml.launch.kv import KV

POLL_S = 0.05
"""How often a waiting `get`/`wait` looks at the store."""


class KVStore(dist.Store):
    def __init__(self, kv: KV, timeout: float = 300.0) -> None:
        super().__init__()
        self._kv = kv
        super().set_timeout(timedelta(seconds=timeout))

    def set(self, key, value) -> None:
        self._kv.set(key, _bytes(value))

    def get(self, key) -> bytes:
        self.wait([key])
        value = self._kv.get(key)
        if value is None:  # deleted between the wait and the read
            raise dist.DistStoreError(f"key {key!r} was deleted while it was read")
        return value

    def add(self, key, amount: int) -> int:
        while True:
            current = self._kv.get(key)
            total = (int(current) if current is not None else 0) + int(amount)
            if self._kv.compare_and_set(key, current, str(total).encode()):
                return total

    def compare_set(self, key, expected, desired) -> bytes:
        expected, desired = _bytes(expected), _bytes(desired)
        if self._kv.compare_and_set(key, expected or None, desired):
            return desired
        current = self._kv.get(key)
        return expected if current is None else current

    def check(self, keys) -> bool:
        return all(self._kv.get(key) is not None for key in keys)

    def wait(self, keys, timeout: timedelta | None = None) -> None:
        limit = (timeout if timeout is not None else self.timeout).total_seconds()
        deadline = time.monotonic() + limit
        missing = list(keys)
        while True:
            missing = [key for key in missing if self._kv.get(key) is None]
            if not missing:
                return
            if time.monotonic() >= deadline:
                raise dist.DistStoreError(
                    f"wait timed out after {limit:g} s for keys {missing}")
            time.sleep(POLL_S)

    def multi_get(self, keys) -> list[bytes]:
        return [self.get(key) for key in keys]

    def multi_set(self, keys, values) -> None:
        for key, value in zip(keys, values, strict=True):
            self.set(key, value)

    def delete_key(self, key) -> bool:
        existed = self._kv.get(key) is not None
        self._kv.delete([key])
        return existed

    deleteKey = delete_key  # noqa: N815 - the name torch's C++ side calls through a PrefixStore


def _bytes(value) -> bytes:
    if isinstance(value, str):
        return value.encode()
    return bytes(value)
