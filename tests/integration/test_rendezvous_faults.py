"""What happens around a rendezvous, with real agents on network-namespace nodes: a node lost
while it joins, Ctrl-C in the first rendezvous, a node too many, the same command run again
on a store that outlived the job, a whole job stopped by SIGTERM, a join into a group of two,
and the node that hosts the store leaving first at the end."""

from __future__ import annotations

import os
import signal

import pytest

from tests.integration.cluster import Nodes, of_kind, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.netns]

STEPS = 40
COMMON = ("--nproc-per-node", "1", f"trainer.max_steps={STEPS}", "faults.step_delay=0.1",
          "elastic.collective_timeout=10", "elastic.stop_grace=20")


def _nodes(cluster, tmp_path, endpoint, nnodes: str, *extra: str) -> Nodes:
    return Nodes(cluster, tmp_path, endpoint, "--nnodes", nnodes, *COMMON, *extra)


def _standalone(cluster, tmp_path, store, nnodes: str, *extra: str) -> Nodes:
    return _nodes(cluster, tmp_path, store, nnodes, "elastic.rdzv.standalone_store=true", *extra)


def _finished(nodes: Nodes, *names: str, steps: int = STEPS) -> None:
    for name in names:
        job = nodes.jobs[name]
        assert job.wait(300) == 0, job.output()[-3000:]
        assert of_kind(nodes.events(name), "done")[-1]["step"] == steps


def _no_step_lost(nodes: Nodes, *names: str) -> None:
    for name in names:
        assert {e["steps_lost"] for e in of_kind(nodes.events(name), "resume")} <= {0}


def test_a_node_lost_in_the_middle_of_a_rendezvous_costs_the_job_seconds(cluster, store,
                                                                           tmp_path):
    hold = tmp_path / "hold"
    nodes = _standalone(cluster, tmp_path, store, "1:3", f"faults.hold_file={hold}")
    try:
        a, b = nodes.start(), nodes.start()
        nodes.stepping(a, 5, world_size=2)
        hold.touch()  # the job waits before each step until the ghost has come and gone
        ghost = nodes.start("faults.die_in_rendezvous=true")
        assert nodes.jobs[ghost].wait(120) == -signal.SIGKILL
        hold.unlink()
        _finished(nodes, a, b)
    finally:
        nodes.stop()
    _no_step_lost(nodes, a, b)
    slowest = max(e["seconds"] for e in of_kind(nodes.events(a), "rendezvous"))
    assert slowest < 30, "no store timeout (60 s) was waited out"


def test_ctrl_c_in_the_first_rendezvous_lets_the_others_start_without_it(cluster, store,
                                                                         tmp_path):
    nodes = _standalone(cluster, tmp_path, store, "2:3", "elastic.rdzv.last_call=1")
    try:
        quitter = nodes.start()
        addr = cluster.nodes[quitter]
        wait_for(lambda: addr in nodes.waiting(), 60, "the first node to wait in a round")
        os.kill(nodes.jobs[quitter].pid, signal.SIGINT)
        assert nodes.jobs[quitter].wait(60) == 130
        assert "interrupted" in nodes.jobs[quitter].output()
        b, c = nodes.start(), nodes.start()
        _finished(nodes, b, c)
    finally:
        nodes.stop()
    first = of_kind(nodes.events(b), "rendezvous")[0]
    assert first["world_size"] == 2 and addr not in {m["node"] for m in first["members"]}


def test_a_node_too_many_waits_as_a_spare_and_steps_in_for_a_lost_one(cluster, store, tmp_path):
    hold = tmp_path / "hold"
    nodes = _standalone(cluster, tmp_path, store, "1:2", f"trainer.max_steps={STEPS + 40}",
                        f"faults.hold_file={hold}")
    try:
        a, b = nodes.start(), nodes.start()
        nodes.stepping(a, 5, world_size=2)
        hold.touch()  # the job waits before each step until the spare waits too
        spare = nodes.start()
        wait_for(lambda: cluster.nodes[spare] in nodes.waiting(), 60, "the spare to wait")
        hold.unlink()
        quiet_from = nodes.stepping(a, 1)["step"]
        nodes.stepping(a, quiet_from + 10)
        restarts = [e for e in of_kind(nodes.events(a), "restart")
                    if e["t"] > nodes.events(spare)[0]["t"]]
        assert restarts == [], "the group trains on while the spare waits"
        leader, survivor = nodes.rank_zero_first(a, b)
        cluster.kill_node(leader)
        _finished(nodes, survivor, spare, steps=STEPS + 40)
    finally:
        nodes.stop()
    _no_step_lost(nodes, survivor, spare)
    assert of_kind(nodes.events(spare), "resume", source="peer")


def test_a_spare_leaves_with_success_when_the_job_finishes(cluster, store, tmp_path):
    hold = tmp_path / "hold"
    nodes = _standalone(cluster, tmp_path, store, "1:1", f"faults.hold_file={hold}")
    try:
        a = nodes.start()
        nodes.stepping(a, 5)
        hold.touch()  # the job waits before each step until the spare waits too
        spare = nodes.start()
        wait_for(lambda: cluster.nodes[spare] in nodes.waiting(), 60, "the spare to wait")
        hold.unlink()
        _finished(nodes, a)
        assert nodes.jobs[spare].wait(60) == 0
        assert "finished without this node" in nodes.jobs[spare].output()
    finally:
        nodes.stop()


def test_the_same_command_resumes_a_run_on_a_store_that_outlived_the_job(cluster, store,
                                                                         tmp_path):
    nodes = _standalone(cluster, tmp_path, store, "1:2", "trainer.max_steps=20")
    try:
        a = nodes.start()
        _finished(nodes, a, steps=20)
        nodes.again(a, "trainer.max_steps=40")  # "raise trainer.max_steps to train on"
        _finished(nodes, a, steps=40)
    finally:
        nodes.stop()
    resumes = of_kind(nodes.events(a), "resume")
    assert resumes[-1]["step"] == 20 and resumes[-1]["source"] == "checkpoint"


def test_a_job_stopped_by_sigterm_everywhere_resumes_with_the_same_command(cluster, store,
                                                                           tmp_path):
    hold = tmp_path / "hold"
    nodes = _standalone(cluster, tmp_path, store, "1:2", f"faults.hold_file={hold}")
    try:
        a, b = nodes.start(), nodes.start()
        reached = nodes.stepping(a, 10, world_size=2)["step"]
        hold.touch()  # so that the job is still running when the signal comes
        for name in (a, b):  # a preemption: the scheduler SIGTERMs every node
            os.kill(nodes.jobs[name].pid, signal.SIGTERM)
        for name in (a, b):
            assert nodes.jobs[name].wait(120) == 130
        hold.unlink()
        nodes.again(a), nodes.again(b)
        _finished(nodes, a, b)
    finally:
        nodes.stop()
    resumed = of_kind(nodes.events(a), "resume")[-1]
    assert resumed["step"] >= reached and resumed["steps_lost"] == 0


def test_a_join_into_a_group_of_two_is_a_membership_change_not_a_failure(cluster, store,
                                                                         tmp_path):
    hold = tmp_path / "hold"
    nodes = _standalone(cluster, tmp_path, store, "1:3", f"faults.hold_file={hold}")
    try:
        a, b = nodes.start(), nodes.start()
        nodes.stepping(a, 5, world_size=2)
        hold.touch()  # the job waits before each step until the newcomer is in
        c = nodes.start()
        nodes.resumed(world_size=3)
        hold.unlink()
        _finished(nodes, a, b, c)
    finally:
        nodes.stop()
    events = nodes.events()
    assert not of_kind(events, "worker_failed"), "nobody failed: a newcomer was taken in"
    assert {e["cause"] for e in of_kind(events, "restart")} == {"membership"}
    assert {e["restart_count"] for e in of_kind(events, "restart")} == {0}


def test_the_node_hosting_the_store_may_leave_first_at_the_end(cluster, tmp_path):
    endpoint = f"{cluster.subnet}.1:29400"  # the first node's address: its agent hosts it
    # The stopped agent does not beat: with the default node_timeout (3 s) the host would
    # rightly drop its node as lost when the last steps and evaluations take longer than that
    # on a loaded machine; this test is about the end, so the host waits for it long enough.
    # (Beats then come every 20/6 s: both nodes are needed, so that none starts alone.)
    nodes = _nodes(cluster, tmp_path, endpoint, "2:2", "elastic.rdzv.node_timeout=20")
    try:
        host, other = nodes.start(), nodes.start()
        nodes.stepping(other, STEPS - 10, world_size=2)
        agent = nodes.jobs[other].pid
        os.kill(agent, signal.SIGSTOP)  # its workers finish; its agent sleeps through the end
        try:
            assert nodes.jobs[host].wait(120) == 0, nodes.jobs[host].output()[-3000:]
        finally:
            os.kill(agent, signal.SIGCONT)  # and wakes up to a store that is gone
        _finished(nodes, other)
        assert "done: tiny" in nodes.jobs[other].output()
    finally:
        nodes.stop()
