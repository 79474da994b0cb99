"""The torch rendezvous handler over a real c10d TCPStore, threads as nodes."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from torch.distributed.elastic.rendezvous import (
    RendezvousError,
    RendezvousGracefulExitError,
    RendezvousParameters,
)

from elasticml.launch.rendezvous import create_handler
from elasticml.launch.store import c10d_store

KEY = "unit-test-job-key-0123456789abcdef"


@pytest.fixture(autouse=True)
def job_key(monkeypatch):
    monkeypatch.setenv("ELASTICML_JOB_KEY", KEY)


@pytest.fixture
def store():
    made = c10d_store("127.0.0.1", 0, True, 10)
    yield made
    del made


def handler(store, min_nodes=1, max_nodes=2, run_id="job", **conf):
    params = RendezvousParameters(
        backend="elasticml-c10d", endpoint=f"127.0.0.1:{store.store.port}", run_id=run_id,
        min_nodes=min_nodes, max_nodes=max_nodes, local_addr="127.0.0.1", is_host="0",
        last_call_timeout="0.2", regroup_wait="0.2", node_timeout="1.5",
        training_hash="h", nproc_per_node="1", **conf)
    return create_handler(params)


def together(*handlers):
    with ThreadPoolExecutor(len(handlers)) as pool:
        return list(pool.map(lambda h: h.next_rendezvous(), handlers))


def test_two_nodes_form_one_round_and_rank_zero_is_the_master(store):
    a, b = handler(store, 2, 2), handler(store, 2, 2)
    infos = together(a, b)
    assert sorted(i.rank for i in infos) == [0, 1] and {i.world_size for i in infos} == {2}
    masters = {(i.bootstrap_store_info.master_addr, i.bootstrap_store_info.master_port)
               for i in infos}
    assert len(masters) == 1
    leader = a if infos[0].rank == 0 else b
    assert masters.pop() == ("127.0.0.1", leader.node.membership.master.port)
    assert not a.use_agent_store and a.get_backend() == "elasticml-c10d"
    for h in (a, b):
        h.shutdown()


def test_a_node_that_leaves_without_finishing_does_not_close_the_job(store):
    a = handler(store, 1, 1)
    a.next_rendezvous()
    spare = handler(store, 1, 1)
    waiting = ThreadPoolExecutor(1).submit(spare.next_rendezvous)
    a.shutdown()  # its workers never reached the exit barrier: a failure, Ctrl-C, SIGTERM
    info = waiting.result(timeout=20)
    assert info.world_size == 1, "the spare carries the job on"
    spare.shutdown()


def test_a_finished_job_lets_a_waiting_spare_go_with_success(store):
    a = handler(store, 1, 1)
    info = a.next_rendezvous()
    spare = handler(store, 1, 1)
    waiting = ThreadPoolExecutor(1).submit(spare.next_rendezvous)
    while spare.node._joining is None:  # it waits in the job's open round
        time.sleep(0.05)
    info.store.add("torchelastic/agent/terminal_state/num", 1)  # what torch's exit barrier does
    a.shutdown()
    with pytest.raises(RendezvousGracefulExitError, match="not needed"):
        waiting.result(timeout=20)


def test_a_store_gone_when_the_job_is_over_is_not_an_error():
    host = c10d_store("127.0.0.1", 0, True, 5)
    port = host.store.port
    a = handler(host, 1, 2)
    info = a.next_rendezvous()
    b_store = type(host)(host.connect(), False, host.connect)
    b = handler(b_store, 1, 2)
    info.store.add("torchelastic/agent/terminal_state/num", 1)
    a._hosts_store = False  # do not linger: the host leaves first
    a.shutdown()
    del info, a, host
    import gc

    gc.collect()
    b._group_store = type("Finished", (), {"reached_exit_barrier": True})()
    b.shutdown()  # its closing writes find no store: logged, not raised
    assert port


def test_without_a_key_a_reachable_endpoint_is_refused(monkeypatch):
    monkeypatch.delenv("ELASTICML_JOB_KEY")
    params = RendezvousParameters(backend="elasticml-c10d", endpoint="10.1.2.3:29400",
                                  run_id="r", min_nodes=1, max_nodes=2)
    with pytest.raises(RendezvousError, match="no job key"):
        create_handler(params)


def test_a_node_with_another_key_is_refused_while_the_job_runs(store, monkeypatch):
    a = handler(store, 1, 2)
    a.next_rendezvous()
    monkeypatch.setenv("ELASTICML_JOB_KEY", "another-key-0123456789abcdefgh")
    stranger = handler(store, 1, 2)
    with pytest.raises(RendezvousError, match="another job key"):
        stranger.next_rendezvous()
    a.shutdown()


def test_the_key_file_is_read_and_handed_to_the_workers(store, monkeypatch, tmp_path):
    monkeypatch.delenv("ELASTICML_JOB_KEY")
    key_file = tmp_path / "key"
    key_file.write_text("from-a-file-0123456789abcdef\n")
    a = handler(store, 1, 1, job_key_file=str(key_file))
    a.next_rendezvous()
    import os

    assert os.environ["ELASTICML_JOB_KEY"] == "from-a-file-0123456789abcdef"
    a.shutdown()


def test_the_hosted_store_listens_on_the_endpoint_address_only():
    made = c10d_store("127.0.0.1", 0, True, 5)
    port = made.store.port
    listening = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
    mine = [f for f in listening if f[3] == "0A" and int(f[1].split(":")[1], 16) == port]
    assert [f[1].split(":")[0] for f in mine] == ["0100007F"], "127.0.0.1, not 0.0.0.0"
    del made


def test_beats_run_in_a_thread_of_their_own_until_shutdown(store):
    a = handler(store, 1, 1)
    a.next_rendezvous()
    assert any(t.name == "rendezvous-beat" for t in threading.enumerate())
    a.shutdown()
    assert not a._beater.is_alive()
