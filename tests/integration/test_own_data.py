"""Your own Dataset, model and loss on the elastic engine, with DataLoader workers on: every
sample exactly once across a crash and a join, and a bad sample ends the job in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from elasticml.train.sample_log import read_sample_log
from tests.integration.cluster import (
    Job,
    Nodes,
    assert_same_data,
    env_with_repo,
    free_port,
    of_kind,
    records_past_a_death,
    run_events,
    train_command,
    wait_for,
)

pytestmark = pytest.mark.integration
TINY_OWN = Path(__file__).with_name("tiny_own.yaml")


def _train(tmp_path, *overrides: str) -> tuple[int, list[dict], str]:
    env = env_with_repo(ELASTICML_SAMPLE_LOG=str(tmp_path / "samples"))
    job = Job(train_command("--run-dir", str(tmp_path / "runs"), *overrides, recipe=TINY_OWN),
              tmp_path / "train.log", env=env, cwd=tmp_path)
    try:
        code = job.wait(180)
        output = job.output()
    finally:
        job.stop()
    return code, run_events(tmp_path / "runs"), output


def test_a_crash_with_loader_workers_loses_no_step_and_no_sample(tmp_path):
    code, events, output = _train(tmp_path, "faults.kill_rank=1", "faults.kill_step=12")
    assert code == 0, output[-3000:]
    assert [r["cause"] for r in of_kind(events, "restart")] == ["failure"]
    resumed = of_kind(events, "resume", restart_count=1)
    assert {e["step"] for e in resumed} == {12} and {e["steps_lost"] for e in resumed} == {0}
    assert {e["step"] for e in of_kind(events, "done")} == {30}
    # the loader's batches carry their samples' index and are checked against the step's ids
    assert_same_data(read_sample_log(tmp_path / "samples"), steps=30, recipe=TINY_OWN)


def test_a_bad_sample_is_an_input_error_not_a_crash_to_retry(tmp_path):
    code, events, output = _train(tmp_path, "data.train.bad_row=7", "elastic.max_restarts=0")
    assert code != 0
    # the rank whose share held sample 7 stops on it (its peer then loses the collective)
    bad = of_kind(events, "worker_failed", exitcode=65)
    assert bad, of_kind(events, "worker_failed")
    line = "data: a training batch could not be read: ValueError: row 7: 'n/a' is not a number"
    assert all(line in e["error"] and "\n" not in e["error"] for e in bad), bad


@pytest.mark.netns
def test_a_join_with_loader_workers_keeps_every_sample_once(cluster, tmp_path):
    steps = 40
    store_port = free_port(cluster.host_addr)
    store = Job([*train_command()[:3], "rendezvous", "serve", "--host", cluster.host_addr,
                 "--port", str(store_port)], tmp_path / "store.log")
    samples, hold = tmp_path / "samples", tmp_path / "hold"
    nodes = Nodes(cluster, tmp_path, f"{cluster.host_addr}:{store_port}", "--nnodes", "1:2",
                  "--nproc-per-node", "1", f"trainer.max_steps={steps}",
                  "faults.step_delay=0.1", "elastic.collective_timeout=10",
                  "elastic.rdzv.standalone_store=true", f"faults.hold_file={hold}",
                  env={"ELASTICML_SAMPLE_LOG": str(samples)}, recipe=TINY_OWN)
    try:
        wait_for(lambda: "serving" in store.output(), 30, "the rendezvous store")
        first = nodes.start()
        nodes.stepping(first, 3)
        hold.touch()  # the job waits before each step until the newcomer is in
        nodes.start()
        nodes.resumed(world_size=2)
        hold.unlink()
        for job in nodes.jobs.values():
            assert job.wait(240) == 0, job.output()[-3000:]
    finally:
        nodes.stop()
        store.stop()
    events = nodes.events()
    assert [(c["previous_world_size"], c["world_size"])
            for c in of_kind(nodes.events(first), "membership")] == [(1, 2)]
    rejoined = [e for e in of_kind(events, "resume") if e["world_size"] == 2]
    assert {e["steps_lost"] for e in rejoined} == {0}
    assert_same_data(read_sample_log(samples), steps, recipe=TINY_OWN)


@pytest.mark.netns
def test_a_node_loss_with_loader_workers_keeps_every_sample_once(cluster, tmp_path):
    steps = 60
    store_port = free_port(cluster.host_addr)
    store = Job([*train_command()[:3], "rendezvous", "serve", "--host", cluster.host_addr,
                 "--port", str(store_port)], tmp_path / "store.log")
    samples = tmp_path / "samples"
    nodes = Nodes(cluster, tmp_path, f"{cluster.host_addr}:{store_port}", "--nnodes", "1:2",
                  "--nproc-per-node", "1", f"trainer.max_steps={steps}",
                  "faults.step_delay=0.1", "elastic.collective_timeout=10",
                  "elastic.rdzv.standalone_store=true",
                  env={"ELASTICML_SAMPLE_LOG": str(samples)}, recipe=TINY_OWN)
    try:
        wait_for(lambda: "serving" in store.output(), 30, "the rendezvous store")
        a, b = nodes.start(), nodes.start()
        wait_for(lambda: any(e["kind"] == "step" and e["world_size"] == 2 and e["step"] >= 5
                             for e in nodes.events(a)), 120, "both nodes to train")
        lost = next(n for n in (a, b) if of_kind(nodes.events(n), "step", rank=0))
        survivor = b if lost == a else a
        cluster.kill_node(lost)
        assert nodes.jobs[survivor].wait(240) == 0, nodes.jobs[survivor].output()[-3000:]
    finally:
        nodes.stop()
        store.stop()
    [resumed] = [e for e in of_kind(nodes.events(survivor), "resume") if e["world_size"] == 1]
    assert resumed["steps_lost"] == 0
    lost_pids = {e["pid"] for e in nodes.events(lost) if e.get("role") == "worker"}
    records = records_past_a_death(samples, lost_pids, resumed["step"], recipe=TINY_OWN)
    assert_same_data(records, steps, recipe=TINY_OWN)

