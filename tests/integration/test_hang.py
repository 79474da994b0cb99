"""A worker that stops making progress is found, its stacks are saved, and the group goes on."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.cluster import Job, Nodes, of_kind, run_events, train_command

pytestmark = pytest.mark.integration


def test_a_hung_worker_is_dumped_ended_and_the_group_restarts_without_losing_steps(tmp_path):
    job = Job(train_command("--run-dir", str(tmp_path / "runs"), "faults.hang_rank=1",
                            "faults.hang_step=6", "elastic.hang_timeout=3"),
              tmp_path / "train.log", cwd=tmp_path)
    try:
        assert job.wait(180) == 0, job.output()[-3000:]
    finally:
        job.stop()

    events = run_events(tmp_path / "runs")
    hangs = of_kind(events, "hang")
    [culprit] = [h for h in hangs if h["killed"]]
    assert culprit["rank"] == 1 and not culprit["waiting_on_peers"]
    assert "before_step" in Path(culprit["stacks"]).read_text(), "its stacks were written"
    [restart] = of_kind(events, "restart")
    assert restart["cause"] == "hang" and restart["failed_rank"] == 1
    resumed = of_kind(events, "resume", restart_count=1)
    assert {e["step"] for e in resumed} == {6} and {e["steps_lost"] for e in resumed} == {0}
    assert {e["step"] for e in of_kind(events, "done")} == {30}


@pytest.mark.netns
def test_across_nodes_only_the_hung_worker_is_ended_and_its_peer_saves(cluster, store, tmp_path):
    nodes = Nodes(cluster, tmp_path, store, "--nnodes", "2:2", "--nproc-per-node", "1",
                  "trainer.max_steps=20", "elastic.rdzv.standalone_store=true",
                  "faults.hang_rank=1", "faults.hang_step=6", "elastic.hang_timeout=3",
                  "elastic.collective_timeout=20")
    try:
        a, b = nodes.start(), nodes.start()
        for name in (a, b):
            assert nodes.jobs[name].wait(240) == 0, nodes.jobs[name].output()[-3000:]
    finally:
        nodes.stop()

    hung_node = next(n for n in (a, b) if of_kind(nodes.events(n), "fault", fault="hang"))
    peer = b if hung_node == a else a
    [culprit] = [h for h in of_kind(nodes.events(hung_node), "hang") if h["killed"]]
    assert culprit["rank"] == 1 and not culprit["waiting_on_peers"]
    assert not [h for h in of_kind(nodes.events(peer), "hang") if h["killed"]], \
        "the worker waiting on the hung one is not ended: it saves instead"
    assert of_kind(nodes.events(peer), "checkpoint", step=6, reason="failure")
    for name in (a, b):
        assert {e["steps_lost"] for e in of_kind(nodes.events(name), "resume")} == {0}
