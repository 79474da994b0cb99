"""`elasticml rendezvous serve`: a c10d store that lives outside the training nodes.

With the c10d backend the store normally runs inside the first agent, and losing that node
ends the job for everyone (torch 2.13: `RendezvousConnectionError` on every survivor). Run this
small process on a machine that does not train (a login node, the scheduler's host) and start
every agent with `--rdzv-endpoint HOST:PORT elastic.rdzv.standalone_store=true`: any training
node, the first included, can then be lost. It holds only rendezvous state, a few kilobytes;
restarting it loses the state of running jobs, so keep it up as long as they run. For a store
that itself survives machine loss, use etcd (backend `etcd-v2`, see docs/operations.md).
"""

from __future__ import annotations

import signal
import threading


def serve(host: str, port: int, ready=print) -> None:
    """Serve until SIGTERM or SIGINT; `port` 0 picks a free one (printed when ready)."""
    from torch.distributed import TCPStore

    store = TCPStore(host, port, is_master=True, wait_for_workers=False, multi_tenant=True)
    ready(f"rendezvous store serving on {host}:{store.port}", flush=True)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    del store
