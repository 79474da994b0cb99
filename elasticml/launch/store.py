"""c10d stores that listen only where they are told: an agent's, and `elasticml rendezvous serve`.

torch's `TCPStore` listens on every interface of its machine whatever host name it is given;
here the listening socket is made and bound first, to the endpoint's address only, and handed
to the store (`master_listen_fd`). An agent hosts the store when the endpoint's address is
one of its machine's own and the port is free; otherwise it connects to whoever hosts it.

`elasticml rendezvous serve` runs the store on a machine that does not train (a login node,
the scheduler's host): start every agent with `--rdzv-endpoint HOST:PORT
elastic.rdzv.standalone_store=true` and any training node, the first included, can be lost.
It holds a few kilobytes of rendezvous state per run id; restarting it loses the state of
running jobs (their nodes then fail), so keep it up while they run. For a store that itself
survives the loss of a machine, use etcd (docs/operations.md).
"""

from __future__ import annotations

import errno
import signal
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to `host:port` only and listening; OSError when it cannot be."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    return sock


def hosted_store(host: str, port: int, timeout: float):
    """(store, listening socket): a master `TCPStore` listening on `host:port` only."""
    from torch.distributed import TCPStore

    sock = listening_socket(host, port)
    store = TCPStore(host, sock.getsockname()[1], None, True, timedelta(seconds=timeout),
                     wait_for_workers=False, master_listen_fd=sock.fileno())
    return store, sock


@dataclass
class AgentStore:
    store: object
    """The agent's own connection (the master `TCPStore` where it hosts the store)."""
    hosted: bool
    connect: Callable
    """Opens another client connection to the same store."""
    listener: socket.socket | None = None
    """The hosted store's listening socket, kept open as long as the store is used."""


def c10d_store(host: str, port: int, is_host: bool | None, timeout: float) -> AgentStore:
    """The store for an agent: hosted here when `is_host` says so, or by default when `host`
    is an address of this machine and `port` is free; else a connection to whoever hosts it."""
    from torch.distributed import TCPStore

    hosted = None
    if is_host is not False:
        try:
            hosted = hosted_store(host, port, timeout)
        except OSError as err:
            if is_host or err.errno not in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
                raise
    if hosted is not None:
        port = hosted[0].port

    def connect():
        return TCPStore(host, port, None, False, timedelta(seconds=timeout))

    if hosted is None:
        return AgentStore(connect(), False, connect)
    return AgentStore(hosted[0], True, connect, hosted[1])


def serve(host: str, port: int, ready=print) -> None:
    """Serve until SIGTERM or SIGINT; `port` 0 picks a free one (printed when ready)."""
    store, sock = hosted_store(host, port, 30.0)
    ready(f"rendezvous store serving on {host}:{store.port}", flush=True)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    del store
    sock.close()
