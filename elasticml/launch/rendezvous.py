"""elasticml's rendezvous backends, registered with torch as `elasticml-c10d`, `elasticml-etcd`
and `elasticml-etcd-v2`.

torch finds them through the `torchrun.handlers` entry point (see pyproject.toml), so the
`torchrun` line printed by `--dry-run` uses them too. All run the round protocol
(`rounds.py`, through `handler.RoundRendezvous`) over a store:
* `elasticml-c10d`: a c10d `TCPStore` at the endpoint. An agent on the endpoint's machine
  hosts it unless `is_host=0` (then `elasticml rendezvous serve` or another process does);
  it listens only on the endpoint's address, never on every interface.
* `elasticml-etcd`: etcd's v3 API (`etcd_kv.py`), etcd 3.4 and later, v2 API or not; the
  endpoint may name every member (`h1:2379,h2:2379,h3:2379`) and a node moves on to the next
  when one does not answer. torch's agent gets a `kvstore.KVStore` over the same etcd.
* `elasticml-etcd-v2`: etcd's v2 API (`python-etcd`), as torch's own `etcd-v2` backend
  (etcd up to 3.5 with `--enable-v2`).

Configuration keys (`--rdzv-conf` or `RendezvousParameters`), seconds as floats:
join_timeout, last_call_timeout, regroup_wait, group_timeout, node_timeout, training_hash,
nproc_per_node, length (`steps:N` | `epochs:E`), job_key_file, is_host (c10d), read_timeout,
fault (`die_in_rendezvous`); for etcd: ca_cert, ssl_cert, ssl_cert_key, user, password_file
(`etcd_access.py`; the password itself only from `ELASTICML_ETCD_PASSWORD` or that file).

The job key (`jobkey.py`) signs every value the protocol writes: from `ELASTICML_JOB_KEY`,
else the first line of `job_key_file`. A job on a private loopback store that has none gets a
fresh one. The key is put in this process's environment, so the workers the agent starts
sign the training state they broadcast with it too.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable
from typing import Any

from elasticml.errors import UserError
from elasticml.jobkey import ENV, fresh_job_key, read_job_key

BACKENDS = ("elasticml-c10d", "elasticml-etcd", "elasticml-etcd-v2")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def handler_factory() -> Callable[[Any], Any]:
    """Entry point for `torchrun.handlers`: torch calls this, then calls what it returns."""
    return create_handler


def register() -> None:
    """Register both backends in this process (the entry point does it for torchrun)."""
    from torch.distributed.elastic.rendezvous import rendezvous_handler_registry

    for name in BACKENDS:
        rendezvous_handler_registry.register(name, create_handler)


def create_handler(params):
    from torch.distributed.elastic.rendezvous import RendezvousError

    from elasticml.launch.handler import RoundRendezvous
    from elasticml.launch.kv import ClockedKV, SealedKV
    from elasticml.launch.liveness import StoreClock
    from elasticml.launch.records import Card, Terms
    from elasticml.launch.rounds import RoundNode, Timings

    key = _job_key(params)
    kv, beat_kv, agent_store, hosts = _storage(params)
    timings = Timings(
        join_timeout=_seconds(params, "join_timeout", Timings.join_timeout),
        last_call=_seconds(params, "last_call_timeout", Timings.last_call),
        regroup_wait=_seconds(params, "regroup_wait", Timings.regroup_wait),
        group_timeout=_seconds(params, "group_timeout", Timings.group_timeout),
        node_timeout=_seconds(params, "node_timeout", Timings.node_timeout),
    )
    timings = Timings(**{**timings.__dict__, "beat_interval": timings.node_timeout / 6})
    addr = params.local_addr or socket.getfqdn()
    me = Card(uuid.uuid4().hex[:12], params.local_addr or socket.gethostname(), addr, 0,
              os.getpid())
    terms = Terms(str(params.get("training_hash", "")),
                  int(params.get("nproc_per_node", 0)), f"{params.min_nodes}:{params.max_nodes}",
                  str(params.get("length", "")))
    # The protocol's clock stands still while the store does not answer (an etcd election):
    # no node is taken for lost, and no wait runs out, for want of a store.
    clock = StoreClock(grace=timings.beat_interval / 2)
    try:
        node = RoundNode(SealedKV(ClockedKV(kv, clock), key), params.run_id, terms, me,
                         params.min_nodes, params.max_nodes, timings, clock=clock,
                         free_port=lambda: free_port(addr),
                         beat_kv=SealedKV(ClockedKV(beat_kv, clock), key))
    except ValueError as err:
        raise RendezvousError(str(err)) from None
    if params.get("fault") == "die_in_rendezvous":
        node.joined = _die
    return RoundRendezvous(node, agent_store, params.backend, hosts_store=hosts,
                           store_timeout=_seconds(params, "read_timeout", 60.0))


def _job_key(params) -> bytes:
    try:
        key = read_job_key(params.get("job_key_file"))
    except UserError as err:
        from torch.distributed.elastic.rendezvous import RendezvousError

        raise RendezvousError(str(err)) from None
    if key is None:
        if not is_private(params.endpoint):
            from torch.distributed.elastic.rendezvous import RendezvousError

            raise RendezvousError(
                f"no job key: a rendezvous at {params.endpoint} is reachable by other machines; "
                f"set {ENV} (the same on every node) or elastic.rdzv.job_key_file")
        key = fresh_job_key()
    os.environ[ENV] = key.decode()
    return key


def _die() -> None:
    """The `faults.die_in_rendezvous` rehearsal: this whole agent dies, as a machine would."""
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


def is_private(endpoint: str | None) -> bool:
    """A loopback endpoint (every one of a list): only this machine can reach the store."""
    hosts = [part.strip().rsplit(":", 1)[0].strip("[]")
             for part in (endpoint or "127.0.0.1:0").split(",")]
    return all(host in LOOPBACK for host in hosts)


def _storage(params):
    """(protocol connection, beat connection, torch store for the agent, hosts the store)."""
    from elasticml.launch.kv import EtcdV2KV, TCPStoreKV

    timeout = _seconds(params, "read_timeout", 60.0)
    if params.backend.endswith("etcd-v2"):
        from torch.distributed.elastic.rendezvous.etcd_rendezvous_backend import create_backend

        access = _etcd_access(params, v3=False)
        params.config.update({"protocol": access.scheme, "ca_cert": access.ca_cert,
                              "ssl_cert": access.client_cert, "ssl_cert_key": access.client_key})
        _, store = create_backend(params)
        kv = EtcdV2KV(store.client)
        return kv, kv.clone(), store, False
    if params.backend.endswith("etcd"):
        from elasticml.launch.etcd_kv import EtcdV3KV
        from elasticml.launch.kvstore import KVStore

        kv = EtcdV3KV(_etcd_access(params, v3=True))
        # Beats give up on a member sooner, so that one held by a member without a leader
        # is written through another well within the others' node_timeout.
        beats = EtcdV3KV(kv.access, request_s=_seconds(params, "node_timeout", 3.0) / 3)
        return kv, beats, KVStore(kv.clone(), timeout), False
    from elasticml.launch.store import c10d_store

    host, port = _host_port(params.endpoint)
    made = c10d_store(host, port, params.get_as_bool("is_host", None), timeout)
    kv = TCPStoreKV(made.store, made.connect, timeout, keep=made.listener)
    return kv, kv.clone(), made.connect(), made.hosted


def _etcd_access(params, v3: bool):
    """The launch's way into etcd, checked: a RendezvousError naming what to fix when etcd
    will not serve this node (files, certificates, user, password)."""
    from torch.distributed.elastic.rendezvous import RendezvousError

    from elasticml.launch.etcd_access import EtcdAccessError, access_from_conf
    from elasticml.launch.etcd_kv import check_access

    try:
        access = access_from_conf(params.endpoint, params.get)
        if not v3 and (len(access.endpoints) > 1 or access.user):
            raise EtcdAccessError("etcd-v2 takes one endpoint and no user; use backend etcd "
                                  "(etcd's v3 API) for several members or a user")
        check_access(access, v3=v3)
    except EtcdAccessError as err:
        raise RendezvousError(str(err)) from None
    return access


def free_port(addr: str) -> int:
    """A port free on `addr` right now (rank 0's process group store will listen on it)."""
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((addr, 0))
            return probe.getsockname()[1]
    except OSError:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("", 0))
            return probe.getsockname()[1]


def _host_port(endpoint: str) -> tuple[str, int]:
    host, _, port = (endpoint or "127.0.0.1:0").rpartition(":")
    if not host or not port.isdigit():
        from torch.distributed.elastic.rendezvous import RendezvousError

        raise RendezvousError(f"rendezvous endpoint {endpoint!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def _seconds(params, key: str, default: float) -> float:
    return float(params.get(key, default))
