"""The round protocol of `launch/rounds.py` against a real in-process TCPStore, threads as nodes."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from torch.distributed import TCPStore
from torch.distributed.elastic.rendezvous import (
    RendezvousClosedError,
    RendezvousParameters,
    RendezvousTimeoutError,
)

from elasticml.launch.rendezvous import create_handler
from elasticml.launch.rounds import RoundRendezvous, Timings

FAST = Timings(join_timeout=20, last_call=0.2, regroup_wait=0.2, group_timeout=5)


@pytest.fixture
def server():
    store = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False,
                     timeout=timedelta(seconds=10), multi_tenant=True)
    yield store
    del store


def node(server, min_nodes=1, max_nodes=2, timings=FAST) -> RoundRendezvous:
    """A node with its own connection to the store, as on another machine."""
    client = TCPStore("127.0.0.1", server.port, is_master=False,
                      timeout=timedelta(seconds=10))
    return RoundRendezvous(client, "elasticml-c10d", "job", min_nodes, max_nodes,
                           local_addr="127.0.0.1", timings=timings)


def together(*handlers):
    """next_rendezvous() of every handler at once; their RendezvousInfo in the same order."""
    with ThreadPoolExecutor(len(handlers)) as pool:
        return list(pool.map(lambda h: h.next_rendezvous(), handlers))


def in_background(handler):
    """next_rendezvous() in a thread; `done` gets its "info" or its "error"."""
    done: dict = {}

    def run():
        try:
            done["info"] = handler.next_rendezvous()
        except Exception as err:  # noqa: BLE001 - handed to the test
            done["error"] = err

    thread = threading.Thread(target=run)
    thread.start()
    return thread, done


def wait_until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_two_nodes_form_a_round_with_distinct_ranks_and_one_master(server):
    a, b = node(server, 2, 2), node(server, 2, 2)
    infos = together(a, b)
    assert sorted(i.rank for i in infos) == [0, 1]
    assert {i.world_size for i in infos} == {2}
    masters = {(i.bootstrap_store_info.master_addr, i.bootstrap_store_info.master_port)
               for i in infos}
    assert len(masters) == 1 and masters.pop()[0] == "127.0.0.1"
    assert not a.use_agent_store and a.get_backend() == "elasticml-c10d"


def test_a_late_node_waits_for_the_next_round_and_the_group_takes_it_in(server):
    a = node(server, 1, 3)
    first = a.next_rendezvous()
    assert (first.rank, first.world_size) == (0, 1)
    assert a.num_nodes_waiting() == 0

    b = node(server, 1, 3)
    thread, done = in_background(b)
    wait_until(lambda: a.num_nodes_waiting() == 1)
    assert "info" not in done, "a newcomer waits for the running group, not the last call"

    started = time.monotonic()
    again = a.next_rendezvous()  # the agent restarts into the next round
    thread.join(5)
    assert time.monotonic() - started < FAST.last_call, "the whole group is back: no waiting"
    assert again.world_size == done["info"].world_size == 2
    assert {again.rank, done["info"].rank} == {0, 1}
    assert a.num_nodes_waiting() == b.num_nodes_waiting() == 0
    # every round has a store of its own: nothing from the first round shows through
    first.store.set("stale", "1")
    assert not again.store.check(["stale"])


def test_a_node_beyond_max_nodes_shows_as_waiting(server):
    a, b = node(server, 2, 2), node(server, 2, 2)
    together(a, b)
    c = node(server, 2, 2)
    thread, done = in_background(c)
    wait_until(lambda: a.num_nodes_waiting() == 1 and b.num_nodes_waiting() == 1)
    a.set_closed()  # the job is over: the waiting node is refused
    thread.join(5)
    assert isinstance(done.get("error"), RendezvousClosedError)


def test_survivors_regroup_without_the_lost_node_after_the_regroup_wait(server):
    a, b, c = node(server, 1, 3), node(server, 1, 3), node(server, 1, 3)
    together(a, b, c)
    started = time.monotonic()
    infos = together(a, b)  # c is gone: it never comes back
    elapsed = time.monotonic() - started
    assert {i.world_size for i in infos} == {2}
    assert FAST.regroup_wait <= elapsed < FAST.regroup_wait + 1.0


def test_a_new_node_starts_alone_when_the_previous_group_is_gone(server):
    timings = Timings(join_timeout=20, last_call=0.1, regroup_wait=0.1, group_timeout=0.5)
    node(server, 1, 2, timings).next_rendezvous()  # a group that then dies entirely
    started = time.monotonic()
    info = node(server, 1, 2, timings).next_rendezvous()
    assert info.world_size == 1
    assert time.monotonic() - started >= timings.group_timeout


def test_a_closed_rendezvous_refuses_new_nodes(server):
    a = node(server)
    a.next_rendezvous()
    assert a.shutdown() and a.is_closed()
    with pytest.raises(RendezvousClosedError):
        node(server).next_rendezvous()


def test_no_quorum_within_the_join_timeout_is_a_timeout(server):
    lonely = node(server, 2, 2, Timings(join_timeout=0.3))
    with pytest.raises(RendezvousTimeoutError, match="1 of at least 2"):
        lonely.next_rendezvous()


def test_the_registered_backend_builds_it_behind_the_recipe_guard(server):
    params = RendezvousParameters(backend="elasticml-c10d", endpoint=f"127.0.0.1:{server.port}",
                                  run_id="guarded", min_nodes=1, max_nodes=1, is_host="0",
                                  last_call_timeout="0.1", training_hash="abc")
    handler = create_handler(params)
    info = handler.next_rendezvous()
    assert (info.rank, info.world_size) == (0, 1)
    assert handler.get_backend() == "elasticml-c10d" and not handler.use_agent_store
