"""A worker SIGKILLed mid-run: the group restarts once and resumes at the step it had reached."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from elasticml.train.checkpoint import read_checkpoint
from elasticml.train.sample_log import read_sample_log
from tests.integration.cluster import (
    TINY,
    Job,
    assert_same_data,
    env_with_repo,
    of_kind,
    run_events,
    train_command,
    wait_for,
    with_model,
)

pytestmark = pytest.mark.integration


def _train(tmp_path, *overrides: str, samples: bool = False, recipe: Path = TINY) -> list[dict]:
    env = env_with_repo(ELASTICML_SAMPLE_LOG=str(tmp_path / "samples")) if samples else None
    job = Job(train_command("--run-dir", str(tmp_path / "runs"), *overrides, recipe=recipe),
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
    """The only worker stops at step 15 (a hang), the test waits until the checkpoint of step
    10 is announced (so on disk), then SIGKILLs it: the restart resumes from that file."""
    job = Job(train_command("--run-dir", str(tmp_path / "runs"), "elastic.nproc_per_node=1",
                            "faults.hang_rank=0", "faults.hang_step=15"),
              tmp_path / "train.log", cwd=tmp_path)
    try:
        def stuck_with_step_10_on_disk():
            events = run_events(tmp_path / "runs")
            hung = of_kind(events, "fault", fault="hang")
            return hung and of_kind(events, "checkpoint", step=10) and hung[0]
        hung = wait_for(stuck_with_step_10_on_disk, 120, "the hang at step 15")
        assert (tmp_path / "runs/tiny/checkpoints/step-10.pt").is_file(), "announced: on disk"
        os.kill(hung["pid"], signal.SIGKILL)
        assert job.wait(180) == 0, job.output()[-3000:]
    finally:
        job.stop()
    events = run_events(tmp_path / "runs")

    [resumed] = of_kind(events, "resume", restart_count=1)
    assert resumed["step"] == 10 and resumed["source"] == "checkpoint"
    assert resumed["steps_lost"] == 5
    assert {e["step"] for e in of_kind(events, "done")} == {30}


@pytest.mark.parametrize("dropout", [0.0, 0.3], ids=["no dropout", "dropout"])
def test_a_disturbed_run_ends_where_an_undisturbed_one_does(tmp_path, dropout):
    """Same world size, exact resume: the parameters agree to float rounding (1e-5), dropout
    included (each step's random stream is the one the undisturbed run drew)."""
    common = ("trainer.max_steps=20", f"model.dropout={dropout}")
    _train(tmp_path / "calm", *common)
    _train(tmp_path / "hit", *common, "faults.kill_rank=1", "faults.kill_step=7")
    calm = read_checkpoint(tmp_path / "calm/runs/tiny/checkpoints/step-20.pt")["model"]
    hit = read_checkpoint(tmp_path / "hit/runs/tiny/checkpoints/step-20.pt")["model"]
    for name, value in calm.items():
        assert (value - hit[name]).abs().max() <= 1e-5, name


def test_ranks_draw_different_dropout_masks(tmp_path):
    recipe = with_model(tmp_path, {"_target_": "user_code.MaskedMLP", "features": 64,
                                   "classes": 10, "log_dir": str(tmp_path)})
    _train(tmp_path, "trainer.max_steps=4", recipe=recipe)
    rank0 = (tmp_path / "masks-rank0.txt").read_text().split()
    rank1 = (tmp_path / "masks-rank1.txt").read_text().split()
    assert len(rank0) == len(rank1) == 4
    assert all(a != b for a, b in zip(rank0, rank1, strict=True))


def test_a_state_saved_by_another_rank_than_0_carries_the_best_metric(tmp_path):
    """Rank 0 dies at step 12, so the state the group resumes from is rank 1's. The data
    validate worse the longer the model trains: `best.pt` must keep the best model, not be
    replaced by the first (worse) validation after the restart."""
    recipe = with_model(
        tmp_path, {"_target_": "user_code.MLP", "features": 4, "classes": 2}, task=None,
        data={"splits": {"_target_": "user_code.flipped_splits"}},
        loss={"_target_": "torch.nn.CrossEntropyLoss"},
        metrics={"accuracy": {"_target_": "torchmetrics.classification.MulticlassAccuracy",
                              "num_classes": 2}})
    events = _train(tmp_path, "trainer.max_steps=25", "trainer.eval_every=5",
                    "faults.kill_rank=0", "faults.kill_step=12", recipe=recipe)
    folder = tmp_path / "runs/tiny/checkpoints"

    [saved] = [e for e in of_kind(events, "checkpoint", step=12) if e["reason"] == "failure"]
    assert saved["rank"] == 1
    validations = [(e["step"], e["metrics"]["accuracy"])
                   for e in of_kind(events, "eval", split="val")]
    assert [step for step, _ in validations] == [5, 10, 15, 20, 25]
    best_step, best_value = max(validations[:2], key=lambda v: (v[1], -v[0]))
    assert max(value for _, value in validations[2:]) < best_value, "the data do their part"
    expected = {"metric": "accuracy", "value": best_value, "step": best_step}
    assert read_checkpoint(folder / "step-25.pt")["best"] == expected
    assert read_checkpoint(folder / "best.pt")["best"] == expected
    assert {e["step"] for e in of_kind(events, "checkpoint", reason="best")} <= {5, 10}
    assert not of_kind(events, "warning"), "both ranks computed the same validation metric"
