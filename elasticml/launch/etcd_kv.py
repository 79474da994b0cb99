"""The round protocol's store over etcd's v3 API, through `etcd3gw` (etcd's HTTP/JSON gateway).

etcd 3.4 and later serve the v3 API as JSON over HTTP on the client port, with or without
`--enable-v2` (etcd 3.6 has no v2 API at all), so no gRPC or protobuf package is needed. The
five operations of `kv.KV`:
* `get` is a range read of one key (linearizable: the value the cluster agreed on);
* `set` is a put;
* `compare_and_set` is one transaction: compare the key's create revision with 0 ("missing")
  or its value with the expected one, and put only if it holds;
* `delete` is one transaction of deletes; `delete_prefix` one delete of a key range.
Keys live under `/elasticml-v3/` (`/elasticml-v3/elasticml/<run id>/...`), the prefix to grant
a role on. No leases: liveness is judged from beat counters on each node's own clock
(`liveness.py`; it stands still while the store does not answer) and the protocol bounds its
keys itself (a ring of rounds, beats of departed nodes and old generations deleted), so a
lease would only add a keep-alive per node and a second, server-side notion of liveness that
could disagree with the first.

A connection knows every member of the cluster and uses one at a time; a member that does
not answer within `REQUEST_S` (killed, cut off, holding the request while it has no leader)
is left for the next, so losing etcd's leader or any minority of members costs a node a few
slow seconds, not the job. A request retried on another member may already have been
applied by the first: that is harmless here, as every write is a put of the node's own
value or a compare-and-set, which the protocol re-reads after whatever it returned.
With a user, the connection logs in (`/v3/auth/authenticate`) and sends the token with each
request; an expired token, or one a newly used member does not know, is renewed by logging
in again. Every failure becomes `StoreUnreachable`; `EtcdRefused`, a kind of it, is etcd
answering that it will not serve this node as configured (certificates, user, password,
permissions), with a message that says what to fix (`etcd_refusals.py`).
"""

from __future__ import annotations

import base64
import logging

from elasticml.launch.etcd_access import EtcdAccess, EtcdAccessError
from elasticml.launch.etcd_refusals import (
    answer,
    login_refusal,
    refusal_of,
    short,
    tls_refusal,
)
from elasticml.launch.kv import StoreUnreachable

logger = logging.getLogger(__name__)

PREFIX = "/elasticml-v3"
CONNECT_S = 2.0
REQUEST_S = 3.0
"""How long one member may take to answer before the request goes to the next. A member
that lost its leader, or forwarded a write to a leader that died, holds a request for up to
etcd's own limit (5 s + 2 election timeouts); by then another member has a new leader (an
election takes 1-2 s with etcd's defaults)."""
MAX_TXN_OPS = 64
"""Deletes per transaction (etcd allows 128 operations in one by default)."""
_INVALID_TOKEN = 16  # gRPC UNAUTHENTICATED: the token expired or this member does not know it


class EtcdRefused(StoreUnreachable):
    """etcd answered, but will not serve this node as configured; the message says what to
    fix (a certificate, the user, the password, the user's permissions)."""


class EtcdV3KV:
    def __init__(self, access: EtcdAccess, prefix: str = PREFIX,
                 request_s: float = REQUEST_S) -> None:
        import etcd3gw
        import requests

        self.access, self.prefix, self.request_s = access, prefix.rstrip("/"), request_s
        timeout = (min(CONNECT_S, request_s), request_s)
        self._session = requests.Session()
        # The environment's proxies and CA bundle (REQUESTS_CA_BUNDLE would replace the CA
        # given here) are not for etcd: it is reached directly, trusting only `ca_cert`.
        self._session.trust_env = False
        if access.ca_cert:
            self._session.verify = access.ca_cert
        if access.client_cert and access.client_key:
            self._session.cert = (access.client_cert, access.client_key)
        self._clients = [etcd3gw.client(host=host, port=port, protocol=access.scheme,
                                        session=self._session, timeout=timeout,
                                        api_path="/v3/")
                         for host, port in access.endpoints]
        self._at = 0
        """The member in use: the first that answered."""
        self._logged_in = False

    # --- the five operations --------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        values = self._call(lambda client: client.get(self._path(key)))
        return bytes(values[0]) if values else None

    def set(self, key: str, value: bytes) -> None:
        self._call(lambda client: client.put(self._path(key), bytes(value)))

    def compare_and_set(self, key: str, expected: bytes | None, desired: bytes) -> bool:
        path = _b64(self._path(key))
        if expected is None:
            compare = {"key": path, "result": "EQUAL", "target": "CREATE", "create_revision": 0}
        else:
            compare = {"key": path, "result": "EQUAL", "target": "VALUE",
                       "value": _b64(expected)}
        txn = {"compare": [compare], "failure": [],
               "success": [{"request_put": {"key": path, "value": _b64(desired)}}]}
        result = self._call(lambda client: client.transaction(txn))
        return bool(result.get("succeeded"))

    def delete(self, keys: list[str]) -> None:
        paths = sorted({self._path(key) for key in keys})
        for start in range(0, len(paths), MAX_TXN_OPS):
            txn = {"compare": [], "failure": [], "success": [
                {"request_delete_range": {"key": _b64(p)}}
                for p in paths[start:start + MAX_TXN_OPS]]}
            self._call(lambda client, txn=txn: client.transaction(txn))

    def delete_prefix(self, prefix: str) -> None:
        self._call(lambda client: client.delete_prefix(self._path(prefix)))

    def clone(self) -> EtcdV3KV:
        return EtcdV3KV(self.access, self.prefix, self.request_s)

    # --- for checks, tests and benchmarks -------------------------------------------------

    def contents(self) -> dict[str, bytes]:
        """Every key under this store's prefix (as the protocol names it) and its value."""
        items = self._call(lambda client: client.get_prefix(self.prefix + "/"))
        return {meta["key"].decode()[len(self.prefix):]: bytes(value) for value, meta in items}

    def check_writable(self) -> None:
        """Ask etcd to check that this user may write under the prefix, without writing: a
        transaction whose comparison never holds (etcd checks the permissions of every
        operation in a transaction, taken or not)."""
        path = _b64(self._path("/elasticml/.access-check"))
        txn = {"compare": [{"key": path, "result": "LESS", "target": "VERSION", "version": 0}],
               "success": [{"request_put": {"key": path, "value": _b64(b"x")}}],
               "failure": []}
        self._call(lambda client: client.transaction(txn))

    # --- inside ---------------------------------------------------------------------------

    def _path(self, key: str) -> str:
        return f"{self.prefix}/{key.lstrip('/')}"

    def _call(self, operation):
        """`operation(client)` on the member in use, moving on to the next member while one
        does not answer."""
        from etcd3gw.exceptions import Etcd3Exception
        from requests import RequestException

        troubles, refusal = [], None
        for _ in self._clients:
            client = self._clients[self._at]
            where = _where(client)
            try:
                return self._on(client, operation)
            except EtcdRefused:
                raise
            except (Etcd3Exception, RequestException, OSError, ValueError, KeyError) as err:
                refusal = refusal or tls_refusal(err, where, self.access)
                troubles.append(f"{where}: {short(err)}")
                self._at = (self._at + 1) % len(self._clients)
        if refusal:
            raise EtcdRefused(refusal)
        raise StoreUnreachable(f"no etcd member answered ({'; '.join(troubles)})")

    def _on(self, client, operation):
        from etcd3gw.exceptions import Etcd3Exception

        if self.access.user and not self._logged_in:
            self._log_in(client)
        try:
            return operation(client)
        except Etcd3Exception as err:
            code, message = answer(err)
            if code == _INVALID_TOKEN and self.access.user:
                self._log_in(client)
                return operation(client)
            refusal = refusal_of(code, message, _where(client), self.access, self.prefix)
            if refusal:
                raise EtcdRefused(refusal) from None
            raise

    def _log_in(self, client) -> None:
        from etcd3gw.exceptions import Etcd3Exception

        user, where = self.access.user, _where(client)
        try:
            password = self.access.password()
        except EtcdAccessError as err:
            raise EtcdRefused(str(err)) from None
        self._session.headers.pop("Authorization", None)
        try:
            reply = client.post(client.get_url("/auth/authenticate"),
                                json={"name": user, "password": password})
        except Etcd3Exception as err:
            code, message = answer(err)
            refusal = refusal_of(code, message, where, self.access, self.prefix)
            if refusal:
                raise EtcdRefused(refusal) from None
            refusal = login_refusal(message, where, self.access)
            if refusal:
                raise EtcdRefused(refusal) from None
            raise  # no leader, a timeout: the next member, or a later try
        self._session.headers["Authorization"] = reply["token"]
        self._logged_in = True


def check_access(access: EtcdAccess, v3: bool = True, prefix: str = PREFIX) -> None:
    """EtcdAccessError naming what to fix when etcd will not serve this node as configured:
    unreadable or malformed TLS files, a CA that did not sign the servers' certificates, a
    client certificate etcd refuses, a wrong user or password, no permission on the prefix.
    An etcd that does not answer at all is no error here: the rendezvous keeps trying."""
    problem = access.problem_with_files()
    if problem:
        raise EtcdAccessError(problem)
    kv = EtcdV3KV(access, prefix)
    try:
        if v3:
            kv.get("/elasticml/.access-check")
            kv.check_writable()
        else:
            kv._call(lambda client: _version(client))
    except EtcdRefused as err:
        raise EtcdAccessError(str(err)) from None
    except StoreUnreachable as err:
        logger.warning("etcd is not reachable yet (%s); the rendezvous keeps trying", err)


def _version(client):
    """The server's version (any etcd answers it; TLS problems show here as elsewhere)."""
    from etcd3gw.exceptions import Etcd3Exception

    reply = client.session.get(client.base_url + "/version", timeout=client.timeout)
    if reply.status_code != 200:
        raise Etcd3Exception(reply.text, reply.reason)
    return reply.json()


def _b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def _where(client) -> str:
    return f"{client.host}:{client.port}"
