"""Nodes as network namespaces: joins, losses (the store's and rank 0's node included),
partitions and a node with the wrong recipe. Each node has its own run dir: no shared disk."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from elasticml.train.sample_log import read_sample_log
from tests.integration.cluster import (
    Nodes,
    assert_same_data,
    env_with_repo,
    of_kind,
)

pytestmark = [pytest.mark.integration, pytest.mark.netns]

STEPS = 80
COMMON = ("--nnodes", "1:2", "--nproc-per-node", "1", f"trainer.max_steps={STEPS}",
          "faults.step_delay=0.1", "elastic.collective_timeout=10")


def _nodes(cluster, tmp_path, endpoint, *extra, **kwargs) -> Nodes:
    return Nodes(cluster, tmp_path, endpoint, *COMMON, *extra, **kwargs)


def test_a_node_that_joins_later_is_taken_in_without_losing_a_step(cluster, store, tmp_path):
    samples, hold = tmp_path / "samples", tmp_path / "hold"
    nodes = _nodes(cluster, tmp_path, store, "elastic.rdzv.standalone_store=true",
                   f"faults.hold_file={hold}", env={"ELASTICML_SAMPLE_LOG": str(samples)})
    try:
        first = nodes.start()
        nodes.stepping(first, 5)
        hold.touch()  # the job waits before each step until the newcomer is in
        second = nodes.start()
        nodes.resumed(world_size=2)
        hold.unlink()
        for job in nodes.jobs.values():
            assert job.wait(240) == 0, job.output()[-3000:]
    finally:
        nodes.stop()

    events = nodes.events()
    [change] = of_kind(nodes.events(first), "membership")
    assert (change["previous_world_size"], change["world_size"]) == (1, 2)
    assert of_kind(nodes.events(first), "restart", cause="membership")
    assert of_kind(nodes.events(second), "resume", source="peer")
    rejoined = [e for e in of_kind(events, "resume") if e["world_size"] == 2]
    assert len({e["step"] for e in rejoined}) == 1 and rejoined[0]["step"] > 0
    assert {e["steps_lost"] for e in rejoined} == {0}
    assert {e["step"] for e in of_kind(events, "done")} == {STEPS}
    assert_same_data(read_sample_log(samples), STEPS)

    report = subprocess.run([sys.executable, "-m", "elasticml", "report",
                             str(nodes.run_root(first) / "tiny"), "--json"],
                            capture_output=True, text=True, env=env_with_repo())
    assert report.returncode == 0, report.stderr
    told = json.loads(report.stdout)
    assert [m["world_size"] for m in told["membership"]] == [1, 2]
    assert told["failures"] == [] and told["steps_lost"] == 0 and told["steps"] == STEPS


@pytest.mark.parametrize("backend", ["standalone-store",
                                     pytest.param("etcd", marks=pytest.mark.etcd)])
def test_losing_rank_zeros_node_leaves_the_survivor_training(cluster, store, request, tmp_path,
                                                             backend):
    if backend == "etcd":
        extra = ("--rdzv-backend", "etcd-v2")
        endpoint = request.getfixturevalue("etcd")
    else:
        extra, endpoint = ("elastic.rdzv.standalone_store=true",), store
    nodes = _nodes(cluster, tmp_path, endpoint, *extra)
    try:
        a, b = nodes.start(), nodes.start()
        nodes.stepping(a, 5, world_size=2)
        leader, survivor = nodes.rank_zero_first(a, b)
        cluster.kill_node(leader)
        assert nodes.jobs[survivor].wait(240) == 0, nodes.jobs[survivor].output()[-3000:]
    finally:
        nodes.stop()

    events = nodes.events(survivor)
    [change] = of_kind(events, "membership")
    assert (change["previous_world_size"], change["world_size"]) == (2, 1)
    [resumed] = [e for e in of_kind(events, "resume") if e["world_size"] == 1]
    last_before = max(e["step"] for e in of_kind(events, "step") if e["world_size"] == 2)
    assert resumed["step"] >= last_before and resumed["steps_lost"] == 0
    assert {e["step"] for e in of_kind(events, "done")} == {STEPS}


def test_a_partitioned_node_is_left_behind_and_nothing_hangs(cluster, store, tmp_path):
    nodes = _nodes(cluster, tmp_path, store, "elastic.rdzv.standalone_store=true",
                   "elastic.collective_timeout=5")
    try:
        a, b = nodes.start(), nodes.start()
        nodes.stepping(a, 5, world_size=2)
        cut, survivor = nodes.rank_zero_first(a, b)
        cluster.partition(cut)
        assert nodes.jobs[survivor].wait(240) == 0, nodes.jobs[survivor].output()[-3000:]
    finally:
        nodes.stop()

    events = nodes.events(survivor)
    assert [e["world_size"] for e in of_kind(events, "membership")] == [1]
    [resumed] = [e for e in of_kind(events, "resume") if e["world_size"] == 1]
    assert resumed["steps_lost"] == 0
    assert {e["step"] for e in of_kind(events, "done")} == {STEPS}


def test_a_node_with_another_recipe_is_refused_and_the_job_goes_on(cluster, store, tmp_path):
    hold = tmp_path / "hold"
    nodes = _nodes(cluster, tmp_path, store, "elastic.rdzv.standalone_store=true",
                   f"faults.hold_file={hold}")
    try:
        first = nodes.start()
        nodes.stepping(first, 5)
        hold.touch()  # the job waits before each step: it still runs when the odd one comes
        odd = nodes.start("optimizer.lr=0.1")
        assert nodes.jobs[odd].wait(60) == 2
        hold.unlink()
        assert "refused" in nodes.jobs[odd].output()
        assert nodes.jobs[first].wait(240) == 0, nodes.jobs[first].output()[-3000:]
    finally:
        nodes.stop()

    events = nodes.events(first)
    assert not of_kind(events, "membership") and not of_kind(events, "restart")
    assert {e["step"] for e in of_kind(events, "done")} == {STEPS}
