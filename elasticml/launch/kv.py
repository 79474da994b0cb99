"""The five store operations the round protocol needs, over c10d's `TCPStore`, etcd and memory.

`rounds.py` decides membership with nothing but `get`, `set`, `compare_and_set`, `delete`
and a prefix delete. Every read is non-blocking (a missing key is `None`, never a wait for
the store's timeout), and every decision is one compare-and-set, so a process that dies
between any two operations leaves the store in a state the others can read and continue
from. The same protocol then runs over:

* `TCPStoreKV` - torch's c10d `TCPStore` (hosted by an agent or `elasticml rendezvous serve`);
* `EtcdV2KV`  - etcd's v2 API through the `python-etcd` client torch's etcd backend uses;
* `MemoryKV`  - a dict, for the model-based tests of the protocol;
* `etcd_kv.EtcdV3KV` - etcd's v3 API (its own module: members, TLS and users).

`SealedKV` wraps any of them so that values carry an HMAC under the job key (`jobkey.py`):
a value written without the key reads as missing. `ClockedKV` tells the clock that judges
beats (`liveness.StoreClock`) when the store does not answer.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import threading
from datetime import timedelta
from typing import Protocol

from elasticml.jobkey import ForgedValue, seal, unseal

logger = logging.getLogger(__name__)


class StoreUnreachable(ConnectionError):
    """The rendezvous store did not answer (it is down, or this node is cut off from it)."""


class KV(Protocol):
    def get(self, key: str) -> bytes | None: ...

    def set(self, key: str, value: bytes) -> None: ...

    def compare_and_set(self, key: str, expected: bytes | None, desired: bytes) -> bool:
        """Write `desired` if the key holds `expected` (None: if the key is missing)."""

    def delete(self, keys: list[str]) -> None: ...

    def delete_prefix(self, prefix: str) -> None:
        """Remove every key under `prefix` where the store can list keys; else do nothing."""

    def clone(self) -> KV:
        """Another connection to the same store (for a second thread)."""


class MemoryKV:
    """A dict behind a lock: the store of the protocol's model-based tests."""

    def __init__(self, data: dict[str, bytes] | None = None, lock=None) -> None:
        self.data = {} if data is None else data
        self._lock = lock or threading.Lock()

    def get(self, key: str) -> bytes | None:
        with self._lock:
            return self.data.get(key)

    def set(self, key: str, value: bytes) -> None:
        with self._lock:
            self.data[key] = bytes(value)

    def compare_and_set(self, key: str, expected: bytes | None, desired: bytes) -> bool:
        with self._lock:
            if self.data.get(key) != expected:
                return False
            self.data[key] = bytes(desired)
            return True

    def delete(self, keys: list[str]) -> None:
        with self._lock:
            for key in keys:
                self.data.pop(key, None)

    def delete_prefix(self, prefix: str) -> None:
        with self._lock:
            for key in [k for k in self.data if k.startswith(prefix)]:
                del self.data[key]

    def clone(self) -> MemoryKV:
        return MemoryKV(self.data, self._lock)


ABSENT = b"\x00elasticml: no such key\x00"
"""What a read through `compare_set` returns for a missing key; no value written is ever it."""


class TCPStoreKV:
    """c10d `TCPStore`. A read is a compare-and-set that never matches: `compare_set(key,
    ABSENT, ABSENT)` answers the value, or ABSENT when there is none, and writes nothing. It
    never waits: `check` then `get` waited the store's whole timeout when the key was deleted
    in between (a new generation clearing old rounds while another node read them).
    Compare-and-set is the store's own `compare_set` (the empty string stands for "missing",
    so values are never empty)."""

    def __init__(self, store, connect=None, timeout: float = 30.0, keep=None) -> None:
        self._store, self._connect, self._timeout = store, connect, timeout
        self._keep = keep  # what must live as long as this connection (a listening socket)
        store.set_timeout(timedelta(seconds=timeout))

    def get(self, key: str) -> bytes | None:
        with _unreachable_on_error():
            value = bytes(self._store.compare_set(key, ABSENT, ABSENT))
        return None if value == ABSENT else value

    def set(self, key: str, value: bytes) -> None:
        with _unreachable_on_error():
            self._store.set(key, value)

    def compare_and_set(self, key: str, expected: bytes | None, desired: bytes) -> bool:
        with _unreachable_on_error():
            now = self._store.compare_set(key, expected or b"", desired)
        return bytes(now) == desired

    def delete(self, keys: list[str]) -> None:
        with _unreachable_on_error():
            for key in keys:
                self._store.delete_key(key)

    def delete_prefix(self, prefix: str) -> None:
        return None  # a TCPStore cannot list its keys; callers delete what they know

    def clone(self) -> TCPStoreKV:
        if self._connect is None:
            raise RuntimeError("this TCPStoreKV was made without a way to reconnect")
        return TCPStoreKV(self._connect(), self._connect, self._timeout)


class EtcdV2KV:
    """etcd's v2 keys API through a `python-etcd` client; values base64-encoded as torch's
    `EtcdStore` does, under `prefix`."""

    def __init__(self, client, prefix: str = "/elasticml-kv", connect=None) -> None:
        self._client, self._prefix, self._connect = client, prefix.rstrip("/"), connect

    def _path(self, key: str) -> str:
        return f"{self._prefix}/{key.strip('/')}"

    def get(self, key: str) -> bytes | None:
        import etcd

        with _unreachable_on_error():
            try:
                return base64.b64decode(self._client.get(self._path(key)).value)
            except etcd.EtcdKeyNotFound:
                return None

    def set(self, key: str, value: bytes) -> None:
        with _unreachable_on_error():
            self._client.write(self._path(key), base64.b64encode(value).decode())

    def compare_and_set(self, key: str, expected: bytes | None, desired: bytes) -> bool:
        import etcd

        value = base64.b64encode(desired).decode()
        with _unreachable_on_error():
            try:
                if expected is None:
                    self._client.write(self._path(key), value, prevExist=False)
                else:
                    self._client.write(self._path(key), value,
                                       prevValue=base64.b64encode(expected).decode())
                return True
            except (etcd.EtcdAlreadyExist, etcd.EtcdCompareFailed, etcd.EtcdKeyNotFound):
                return False

    def delete(self, keys: list[str]) -> None:
        import etcd

        with _unreachable_on_error():
            for key in keys:
                with contextlib.suppress(etcd.EtcdKeyNotFound):
                    self._client.delete(self._path(key))

    def delete_prefix(self, prefix: str) -> None:
        import etcd

        with _unreachable_on_error(), contextlib.suppress(etcd.EtcdKeyNotFound,
                                                          etcd.EtcdNotDir):
            self._client.delete(self._path(prefix), recursive=True, dir=True)

    def clone(self) -> EtcdV2KV:
        client = self._connect() if self._connect else self._client
        return EtcdV2KV(client, self._prefix, self._connect)


class SealedKV:
    """Values carry an HMAC under the job key; one written without it reads as missing.

    `peek` returns a value's payload without checking it: for what anyone may judge (whether
    the nodes named in a round are still alive), never for what a node acts on."""

    def __init__(self, inner: KV, key: bytes) -> None:
        self.inner, self._key = inner, key
        self._warned: set[str] = set()

    def get(self, key: str) -> bytes | None:
        blob = self.inner.get(key)
        if blob is None:
            return None
        try:
            return unseal(self._key, blob)
        except ForgedValue:
            if key not in self._warned:
                self._warned.add(key)
                logger.warning("ignored %s: not signed with this job's key", key)
            return None

    def peek(self, key: str) -> bytes | None:
        blob = self.inner.get(key)
        return None if blob is None else blob[:-32]

    def signed_by_other_key(self, key: str) -> bool:
        blob = self.inner.get(key)
        if blob is None:
            return False
        try:
            unseal(self._key, blob)
            return False
        except ForgedValue:
            return True

    def seal(self, value: bytes) -> bytes:
        return seal(self._key, value)

    def set(self, key: str, value: bytes) -> None:
        self.inner.set(key, seal(self._key, value))

    def compare_and_set(self, key: str, expected: bytes | None, desired: bytes) -> bool:
        sealed_expected = None if expected is None else seal(self._key, expected)
        return self.inner.compare_and_set(key, sealed_expected, seal(self._key, desired))

    def delete(self, keys: list[str]) -> None:
        self.inner.delete(keys)

    def delete_prefix(self, prefix: str) -> None:
        self.inner.delete_prefix(prefix)

    def clone(self) -> SealedKV:
        return SealedKV(self.inner.clone(), self._key)


class ClockedKV:
    """Tells a `liveness.StoreClock` when each request starts and whether it was answered."""

    def __init__(self, inner: KV, clock) -> None:
        self.inner, self.clock = inner, clock

    def _timed(self, operation, *args):
        request = self.clock.begin()
        answered = False
        try:
            result = operation(*args)
            answered = True
            return result
        finally:
            self.clock.end(request, answered)

    def get(self, key: str) -> bytes | None:
        return self._timed(self.inner.get, key)

    def set(self, key: str, value: bytes) -> None:
        self._timed(self.inner.set, key, value)

    def compare_and_set(self, key: str, expected: bytes | None, desired: bytes) -> bool:
        return self._timed(self.inner.compare_and_set, key, expected, desired)

    def delete(self, keys: list[str]) -> None:
        self._timed(self.inner.delete, keys)

    def delete_prefix(self, prefix: str) -> None:
        self._timed(self.inner.delete_prefix, prefix)

    def clone(self) -> ClockedKV:
        return ClockedKV(self.inner.clone(), self.clock)


class _unreachable_on_error:
    """Store and network errors become `StoreUnreachable` with the original message."""

    def __enter__(self):
        return self

    def __exit__(self, kind, error, trace) -> bool:
        if error is None or isinstance(error, StoreUnreachable):
            return False
        if isinstance(error, OSError | RuntimeError) or type(error).__module__.startswith(
                ("etcd", "urllib3", "torch")):
            raise StoreUnreachable(f"{type(error).__name__}: {error}") from error
        return False
