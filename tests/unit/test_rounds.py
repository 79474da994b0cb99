"""The round protocol, scenario by scenario, on the simulated cluster of `tests/roundsim.py`
(one in-memory store, a fake clock): each test makes one way a job can go wrong happen."""

from __future__ import annotations

import json

import pytest

from elasticml.launch.records import RING, Terms
from elasticml.launch.rounds import Timings
from tests.roundsim import TERMS, Sim

T = Timings(join_timeout=10_000)


def _member_ids(sim: Sim) -> set[str]:
    return {n.name for n in sim.nodes if n.state == "member"}


def test_a_node_that_joined_a_round_and_died_is_left_out_within_seconds():
    sim = Sim(1, 3, T)
    a, b = sim.add_node(), sim.add_node()
    sim.run(2)
    assert _member_ids(sim) == {"n0", "n1"}
    ghost = sim.add_node()
    _step_only(sim, ghost, until=lambda: "n2-id" in _joiners(sim))  # its card is in ...
    ghost.die()  # ... and it dies before the round is decided
    sim.run(T.node_timeout + 2.0)
    assert _member_ids(sim) == {"n0", "n1"}, "the job goes on without the ghost"
    assert sorted(a.node.membership.ids) == sorted(b.node.membership.ids) == ["n0-id", "n1-id"]
    regroups = a.regroups
    sim.run(20)
    assert a.regroups == regroups, "and stays put"


def test_a_node_that_was_decided_into_a_round_and_died_is_dropped_by_its_beat():
    sim = Sim(1, 2, T)
    a = sim.add_node()
    ghost = sim.add_node()
    sim.run(0.1)
    ghost.die()  # in the first round with `a`, dead before it trained a step
    sim.run(T.node_timeout + 2.0)
    assert _member_ids(sim) == {"n0"}
    assert a.node.membership.world_size == 1


def test_ctrl_c_in_the_first_rendezvous_lets_the_others_start_at_once():
    sim = Sim(2, 2, T)
    a, quitter = sim.add_node(), sim.add_node()
    for _ in range(6):
        sim.step(quitter)
        sim.step(a)
    sim.leave(quitter)  # KeyboardInterrupt: the agent says it left
    c = sim.add_node()
    sim.run(1.0)
    assert _member_ids(sim) == {"n0", "n2"}
    assert "n1-id" not in c.node.membership.ids


def test_a_node_beyond_max_waits_as_a_spare_and_steps_in_when_a_member_is_lost():
    sim = Sim(1, 2, T)
    for _ in range(3):
        sim.add_node()
    sim.run(5)
    members = [n for n in sim.nodes if n.state == "member"]
    [spare] = [n for n in sim.nodes if n.state == "joining"]
    assert len(members) == 2
    rounds = len(sim.decisions)
    sim.run(30)
    assert len(sim.decisions) == rounds, "a spare does not make the group regroup"
    members[0].die()  # a member's node is lost
    sim.run(1.5)
    assert _member_ids(sim) == {members[1].name, spare.name}, "the spare took its place"


def test_a_spare_leaves_when_the_job_finishes():
    sim = Sim(1, 2, T)
    for _ in range(3):
        sim.add_node()
    sim.run(3)
    sim.finish()
    sim.run(0.5)
    assert sorted(n.state for n in sim.nodes) == ["finished", "finished", "finished"]


def test_the_whole_group_lost_a_spare_starts_alone_after_the_node_timeout():
    sim = Sim(1, 1, T)
    sim.add_node(), sim.add_node()
    sim.run(2)
    [member] = [n for n in sim.nodes if n.state == "member"]
    [spare] = [n for n in sim.nodes if n.state == "joining"]
    member.die()
    sim.run(T.node_timeout - 0.5)
    assert spare.state == "joining", "a silent group is given node_timeout"
    sim.run(2)
    assert spare.state == "member"


def test_a_member_that_said_it_is_coming_back_is_waited_for_and_a_silent_one_is_not():
    sim = Sim(1, 3, T)
    _, slow, c = sim.add_node(), sim.add_node(), sim.add_node()
    sim.run(3)
    assert _member_ids(sim) == {"n0", "n1", "n2"}
    first = len(sim.decisions)
    slow.node.end_round("failure", coming=True)  # it stops its workers, which save a while
    slow.state, slow.paused = "joining", True  # beats on, takes no step
    sim.run(10)
    assert len(sim.decisions) == first, "the others wait for the member on its way"
    slow.paused = False
    sim.run(1)
    assert len(sim.decisions) == first + 1 and _member_ids(sim) == {"n0", "n1", "n2"}
    c.die()  # a silent member: the others regroup after `regroup_wait`
    sim.run(T.regroup_wait + 0.5)
    assert _member_ids(sim) == {"n0", "n1"}


def test_a_join_is_recorded_as_the_reason_the_group_regroups():
    sim = Sim(1, 3, T)
    a, b = sim.add_node(), sim.add_node()
    sim.run(2)
    newcomer = sim.add_node()
    _step_only(sim, newcomer, until=lambda: "n2-id" in _joiners(sim))
    assert a.node.watch() == 1
    assert b.node.ending_reason() == "join", "b's failed collective is a planned regroup"


def test_a_finished_job_is_not_trained_again_but_can_be_trained_on():
    sim = Sim(1, 2, T)
    sim.add_node(), sim.add_node()
    sim.run(2)
    sim.finish()
    straggler = sim.add_node()  # a node (re)started after the end, with the same command
    sim.run(2)
    assert straggler.state == "finished", "it leaves: the job is done"
    longer = sim.add_node(terms=Terms(**{**TERMS.__dict__, "length": "steps:400"}))
    sim.run(2)
    assert longer.state == "member" and longer.node.gen == 1, "raised max_steps: trains on"
    assert not [k for k in sim.store.data if "/g0/" in k], "the old generation's keys are gone"


def test_a_new_launch_after_every_node_left_starts_at_once_and_after_a_kill_after_the_timeout():
    sim = Sim(1, 2, T)
    a, b = sim.add_node(), sim.add_node()
    sim.run(2)
    sim.leave(a), sim.leave(b)  # SIGTERM everywhere: a preemption
    c = sim.add_node()
    sim.run(1)
    assert c.state == "member" and c.node.gen == 1
    c.die()  # SIGKILL: no word
    d = sim.add_node()
    sim.run(T.node_timeout - 0.5)
    assert d.state == "joining"
    sim.run(2)
    assert d.state == "member" and d.node.gen == 2


def test_another_recipe_is_refused_while_the_job_runs_and_starts_anew_once_it_is_gone():
    sim = Sim(1, 2, T)
    a = sim.add_node()
    sim.run(2)
    other = sim.add_node(terms=Terms("other-hash", 1, "1:2", "steps:200"))
    sim.run(2)
    assert other.state == "refused" and a.state == "member", "the job carries on undisturbed"
    a.die()
    later = sim.add_node(terms=Terms("other-hash", 1, "1:2", "steps:200"))
    sim.run(T.node_timeout + 2)
    assert later.state == "member" and later.node.gen == 1


@pytest.mark.parametrize("field,value", [("nproc_per_node", 2), ("nnodes", "1:3"),
                                         ("length", "steps:7")])
def test_other_elastic_terms_are_refused(field, value):
    sim = Sim(1, 2, T)
    sim.add_node()
    sim.run(2)
    terms = Terms(**{**TERMS.__dict__, field: value})
    stranger = sim.add_node(terms=terms)
    sim.run(2)
    assert stranger.state == "refused"


def test_a_job_with_another_key_is_refused_while_this_one_runs_then_takes_over():
    sim = Sim(1, 2, T)
    a = sim.add_node()
    sim.run(2)
    stranger = sim.add_node(key=b"x" * 32)
    sim.run(2)
    assert stranger.state == "refused" and a.state == "member"
    sim.leave(a)
    successor = sim.add_node(key=b"x" * 32)
    sim.run(1)
    assert successor.state == "member" and successor.node.gen == 1


def test_values_written_without_the_key_are_ignored():
    sim = Sim(1, 2, T)
    a = sim.add_node()
    sim.run(2)
    gen_prefix = "/elasticml/job/g0/"
    forged = b'{"cards":[{"id":"evil","name":"evil","addr":"6.6.6.6","pid":1,"port":1}],' \
             b'"open":true,"r":1}' + b"\0" * 32
    sim.store.data[gen_prefix + "round/1"] = forged  # a stranger offers itself for round 1
    sim.store.data[gen_prefix + "closed"] = b"1" + b"\0" * 32  # and tries to end the job
    sim.run(3)
    assert a.state == "member" and "evil" not in a.node.membership.ids


def test_the_store_holds_a_bounded_number_of_keys_after_a_thousand_rounds():
    sim = Sim(1, 3, T)
    a, b = sim.add_node(), sim.add_node()
    sim.run(2)
    while len(sim.decisions) < 1000:
        visitor = sim.add_node()
        sim.run(0.5)
        sim.leave(visitor)
        sim.run(0.5)
        sim.nodes.remove(visitor)
    assert a.state == b.state == "member"
    keys = [k for k in sim.store.data if "/g0/" in k]
    assert len(keys) <= 3 + 2 * RING + 3, sorted(keys)


def _step_only(sim: Sim, stepping, until, seconds: float = 10.0) -> None:
    """Everyone beats, only `stepping` takes steps, until `until()` (the others keep still)."""
    deadline = sim.clock.now + seconds
    while not until():
        assert sim.clock.now < deadline, "never happened"
        for node in sim.live():
            sim.beat(node)
        sim.step(stepping)
        sim.clock.now += 0.05


def _joiners(sim: Sim) -> set[str]:
    """Ids of the nodes in any open round of generation 0."""
    node = sim.nodes[0].node
    found = set()
    for number in range(RING):
        value = node.kv.get(node.keys.round(0, number))
        if value is not None and json.loads(value)["open"]:
            found |= {card["id"] for card in json.loads(value)["cards"]}
    return found


def test_a_lagging_latest_never_sends_a_node_back_into_the_round_it_left():
    """The node whose decision won died before it moved `latest` (found by the model test)."""
    sim = Sim(1, 3, T)
    a, b = sim.add_node(), sim.add_node()
    sim.run(2)
    current = a.node.membership.round
    key = a.node.keys.in_gen(0, "latest")
    a.node.kv.set(key, str(current - 1).encode())  # as if its decider never moved it
    b.die()
    sim.run(2)
    assert a.state == "member" and a.node.membership.round > current
    assert a.node.membership.ids == ["n0-id"]
