"""A worker SIGKILLed mid-run: the group restarts once and resumes at the step it had reached."""

from __future__ import annotations

import pytest

from elasticml.train.checkpoint import read_checkpoint
from elasticml.train.sample_log import read_sample_log
from tests.integration.cluster import (
    Job,
    assert_same_data,
    env_with_repo,
    of_kind,
    run_events,
    train_command,
)

pytestmark = pytest.mark.integration


def _train(tmp_path, *overrides: str, samples: bool = False) -> list[dict]:
    env = env_with_repo(ELASTICML_SAMPLE_LOG=str(tmp_path / "samples")) if samples else None
    job = Job(train_command("--run-dir", str(tmp_path / "runs"), *overrides),
              tmp_path / "train.log", env=env, cwd=tmp_path)
    try:
        assert job.wait(180) == 0, job.output()[-3000:]
    finally:
        job.stop()
    return run_events(tmp_path / "runs")


@pytest.mark.parametrize("rank", [0, 1])
def test_worker_crash_resumes_at_the_last_completed_step(tmp_path, rank):
    events = _train(tmp_path, f"faults.kill_rank={rank}", "faults.kill_step=12", samples=True)

    [fault] = of_kind(events, "fault")
    assert fault["rank"] == rank
    restarts = of_kind(events, "restart")
    assert [r["cause"] for r in restarts] == ["failure"], "resumed on the first restart"
    assert restarts[0]["failed_rank"] == rank and restarts[0]["signal"] == "SIGKILL"
    resumed = of_kind(events, "resume", restart_count=1)
    assert {e["step"] for e in resumed} == {12}, "nothing replayed, nothing skipped"
    assert {e["steps_lost"] for e in resumed} == {0}
    [recovered] = of_kind(events, "recovered")
    assert recovered["steps_lost"] == 0 and recovered["step"] == 13
    assert {e["step"] for e in of_kind(events, "done")} == {30}
    assert_same_data(read_sample_log(tmp_path / "samples"), steps=30)


def test_losing_every_replica_falls_back_to_the_last_periodic_checkpoint(tmp_path):
    events = _train(tmp_path, "elastic.nproc_per_node=1", "faults.kill_rank=0",
                    "faults.kill_step=15")

    [resumed] = of_kind(events, "resume", restart_count=1)
    assert resumed["step"] == 10 and resumed["source"] == "checkpoint"
    assert resumed["steps_lost"] == 5
    assert {e["step"] for e in of_kind(events, "done")} == {30}


def test_a_disturbed_run_ends_where_an_undisturbed_one_does(tmp_path):
    """Same world size, exact resume: the parameters agree to float rounding (1e-5)."""
    _train(tmp_path / "calm", "trainer.max_steps=20")
    _train(tmp_path / "hit", "trainer.max_steps=20", "faults.kill_rank=1", "faults.kill_step=7")
    calm = read_checkpoint(tmp_path / "calm/runs/tiny/checkpoints/step-20.pt")["model"]
    hit = read_checkpoint(tmp_path / "hit/runs/tiny/checkpoints/step-20.pt")["model"]
    for name, value in calm.items():
        assert (value - hit[name]).abs().max() <= 1e-5, name
