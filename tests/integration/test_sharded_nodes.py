"""fsdp and hsdp across nodes (network namespaces): a join, and the loss of a node under each.

The nodes share one checkpoint folder (`trainer.checkpoint_dir`), as sharded checkpoints need;
each keeps its own run dir for events and logs. A join loses no step under either strategy (the
stop before the regroup is agreed and saved); losing a node loses the steps since the newest
checkpoint under fsdp (its shards are gone) and none under hsdp (the survivor holds a whole
replica and saves it).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from elasticml.train.sample_log import read_sample_log
from tests.integration.cluster import Nodes, assert_same_data, env_with_repo, of_kind

pytestmark = [pytest.mark.integration, pytest.mark.netns]

STEPS = 40


def _nodes(cluster, tmp_path, store, strategy: str, *extra: str, **kwargs) -> Nodes:
    return Nodes(cluster, tmp_path, store, "--nnodes", "1:2", f"trainer.max_steps={STEPS}",
                 f"trainer.strategy={strategy}", f"trainer.checkpoint_dir={tmp_path / 'shared'}",
                 "trainer.checkpoint_every=10", "faults.step_delay=0.1",
                 "elastic.collective_timeout=10", "elastic.rdzv.standalone_store=true", *extra,
                 **kwargs)


def _report(nodes: Nodes, node: str) -> dict:
    answer = subprocess.run([sys.executable, "-m", "elasticml", "report",
                             str(nodes.run_root(node) / "tiny"), "--json"],
                            capture_output=True, text=True, env=env_with_repo())
    assert answer.returncode == 0, answer.stderr
    return json.loads(answer.stdout)


@pytest.mark.parametrize("strategy, nproc", [("fsdp", "1"), ("hsdp", "2")])
def test_a_node_joining_a_sharded_job_costs_no_step(cluster, store, tmp_path, strategy, nproc):
    samples, hold = tmp_path / "samples", tmp_path / "hold"
    nodes = _nodes(cluster, tmp_path, store, strategy, "--nproc-per-node", nproc,
                   f"faults.hold_file={hold}", env={"ELASTICML_SAMPLE_LOG": str(samples)})
    try:
        first = nodes.start()
        nodes.stepping(first, 3)
        hold.touch()  # the job waits before each step until the newcomer is in
        nodes.start()
        nodes.resumed(world_size=2 * int(nproc))
        hold.unlink()
        for job in nodes.jobs.values():
            assert job.wait(240) == 0, job.output()[-3000:]
    finally:
        nodes.stop()

    events = nodes.events()
    saved = of_kind(nodes.events(first), "checkpoint", reason="signal")
    grown = [e for e in of_kind(events, "resume") if e["world_size"] == 2 * int(nproc)]
    assert saved and {e["step"] for e in grown} == {saved[-1]["step"]}
    assert {e["steps_lost"] for e in grown} == {0}
    assert {e["source"] for e in grown} == {"checkpoint"}
    assert {e["step"] for e in of_kind(events, "done")} == {STEPS}
    assert_same_data(read_sample_log(samples), STEPS)
    assert _report(nodes, first)["steps_lost"] == 0


@pytest.mark.parametrize("strategy, nproc", [("fsdp", "1"), ("hsdp", "2")])
def test_losing_a_node_costs_fsdp_the_steps_since_its_checkpoint_and_hsdp_none(
        cluster, store, tmp_path, strategy, nproc):
    nodes = _nodes(cluster, tmp_path, store, strategy, "--nproc-per-node", nproc)
    try:
        a, b = nodes.start(), nodes.start()
        nodes.stepping(a, 14, world_size=2 * int(nproc))
        lost, survivor = nodes.rank_zero_first(a, b)
        cluster.kill_node(lost)
        assert nodes.jobs[survivor].wait(240) == 0, nodes.jobs[survivor].output()[-3000:]
    finally:
        nodes.stop()

    events = nodes.events(survivor)
    smaller = [e for e in of_kind(events, "resume") if e["world_size"] == int(nproc)]
    assert len({e["step"] for e in smaller}) == 1
    last_before = max(e["step"] for e in of_kind(events, "step")
                      if e["world_size"] == 2 * int(nproc))
    resumed, steps_lost = smaller[0]["step"], smaller[0]["steps_lost"]
    unsaved = [e for e in of_kind(events, "warning") if "replica could not save" in e["message"]]
    if strategy == "hsdp" and not unsaved:
        assert resumed >= last_before and steps_lost == 0
        assert of_kind(events, "checkpoint", reason="failure", step=resumed)
    else:  # fsdp; or hsdp whose replica save failed (seen once in ~10 runs): said, and counted
        assert resumed % 10 == 0 and resumed <= last_before
        assert steps_lost >= last_before - resumed and steps_lost < 10 + 5
    assert {e["step"] for e in of_kind(events, "done")} == {STEPS}
    assert _report(nodes, survivor)["steps_lost"] == steps_lost


def test_an_fsdp_job_whose_nodes_do_not_share_the_checkpoint_folder_is_told_in_one_line(
        cluster, store, tmp_path):
    """Each node's own run dir holds its checkpoints by default: fine for ddp, not for shards
    that must all be in one folder."""
    nodes = Nodes(cluster, tmp_path, store, "--nnodes", "2", "--nproc-per-node", "1",
                  "trainer.strategy=fsdp", "elastic.rdzv.standalone_store=true")
    try:
        a, b = nodes.start(), nodes.start()
        codes = [nodes.jobs[n].wait(120) for n in (a, b)]
        outputs = [nodes.jobs[n].output() for n in (a, b)]
    finally:
        nodes.stop()
    assert codes == [2, 2]
    for told in outputs:
        assert "trainer.checkpoint_dir: rank 1 cannot see the checkpoint folder" in told
        assert "Traceback" not in told
