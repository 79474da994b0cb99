"""Workers train the recipe the job started with, and take state only from their own job:
an edited recipe file does not reach restarted workers, a worker or a checkpoint of another
recipe is refused in one line, and so is a state broadcast without the job key."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import pytest

from elasticml.errors import WORKER_INPUT_ERROR_EXIT
from elasticml.train.checkpoint import read_checkpoint
from tests.integration.cluster import (
    TINY,
    Job,
    env_with_repo,
    free_port,
    of_kind,
    run_events,
    train_command,
    wait_for,
)

pytestmark = pytest.mark.integration


def test_editing_the_recipe_mid_run_does_not_change_what_restarted_workers_train(tmp_path):
    recipe = tmp_path / "tiny.yaml"
    shutil.copy(TINY, recipe)
    # rank 1 stops at step 4 and nothing times out until the test ends it
    job = Job(train_command("--run-dir", str(tmp_path / "runs"), "trainer.max_steps=12",
                            "faults.hang_rank=1", "faults.hang_step=4",
                            "elastic.collective_timeout=600", "elastic.stop_grace=601",
                            recipe=recipe),
              tmp_path / "train.log", cwd=tmp_path)
    try:
        hung = wait_for(lambda: of_kind(run_events(tmp_path / "runs"), "fault"), 120,
                        "the hang at step 4")[0]
        recipe.write_text(recipe.read_text().replace("lr: 0.003", "lr: 0.05"))
        os.kill(hung["pid"], signal.SIGKILL)  # the group restarts under the edited file
        assert job.wait(180) == 0, job.output()[-3000:]
    finally:
        job.stop()
    events = run_events(tmp_path / "runs")
    assert {e["step"] for e in of_kind(events, "resume", restart_count=1)} == {4}
    final = read_checkpoint(tmp_path / "runs/tiny/checkpoints/step-12.pt")
    assert final["recipe"]["optimizer"]["lr"] == 0.003


def test_a_worker_given_another_training_hash_refuses_in_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "elasticml.train.worker", str(TINY), "--training-hash",
         "0123456789abcdef", f"run.dir={tmp_path / 'runs'}"],
        capture_output=True, text=True, env=env_with_repo(RANK="0", WORLD_SIZE="1"),
        cwd=tmp_path, timeout=120)
    assert done.returncode == WORKER_INPUT_ERROR_EXIT
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error: ") and "not the one the job started with" in line
    assert "--run-id" in line
    [error] = of_kind(run_events(tmp_path / "runs"), "error")
    assert "0123456789abcdef" in error["message"]


def test_a_checkpoint_trained_under_another_recipe_is_refused(tmp_path):
    first = Job(train_command("--run-dir", str(tmp_path / "runs"), "trainer.max_steps=10"),
                tmp_path / "first.log", cwd=tmp_path)
    try:
        assert first.wait(180) == 0, first.output()[-3000:]
    finally:
        first.stop()
    folder = tmp_path / "runs/tiny/checkpoints"
    before = sorted(p.name for p in folder.glob("step-*.pt"))

    again = Job(train_command("--run-dir", str(tmp_path / "runs"), "trainer.max_steps=20",
                              "optimizer.lr=0.01", "elastic.max_restarts=0"),
                tmp_path / "again.log", cwd=tmp_path)
    try:
        assert again.wait(180) != 0
        told = again.output()
    finally:
        again.stop()
    assert "was trained with another recipe" in told and "--run-id NEW" in told
    assert sorted(p.name for p in folder.glob("step-*.pt")) == before
    assert read_checkpoint(folder / "step-10.pt")["recipe"]["optimizer"]["lr"] == 0.003


def _hand_started_workers(tmp_path, keys: list[str | None], *overrides: str):
    """Two workers started by hand (no agent), each with its own run dir and job key."""
    port = free_port()
    workers = []
    for rank, key in enumerate(keys):
        env = env_with_repo(RANK=str(rank), LOCAL_RANK="0", WORLD_SIZE="2",
                            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        env.pop("ELASTICML_JOB_KEY", None)
        if key:
            env["ELASTICML_JOB_KEY"] = key
        command = [sys.executable, "-m", "elasticml.train.worker", str(TINY),
                   f"run.dir={tmp_path / f'node{rank}'}", *overrides]
        workers.append(Job(command, tmp_path / f"rank{rank}.log", env=env, cwd=tmp_path))
    return workers


def _solo_run(tmp_path, steps: int) -> None:
    """A checkpoint at `steps` in node0's run dir, from a one-worker run."""
    [solo] = [Job([sys.executable, "-m", "elasticml.train.worker", str(TINY),
                   f"run.dir={tmp_path / 'node0'}", f"trainer.max_steps={steps}"],
                  tmp_path / "solo.log", cwd=tmp_path,
                  env=env_with_repo(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1",
                                    MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port())))]
    try:
        assert solo.wait(120) == 0, solo.output()[-3000:]
    finally:
        solo.stop()


def test_the_state_broadcast_carries_the_job_key(tmp_path):
    _solo_run(tmp_path, 3)
    key = "k" * 32
    workers = _hand_started_workers(tmp_path, [key, key], "trainer.max_steps=6")
    try:
        assert [w.wait(120) for w in workers] == [0, 0], workers[1].output()[-3000:]
    finally:
        for worker in workers:
            worker.stop()
    [received] = of_kind(run_events(tmp_path / "node1"), "resume")
    assert received["source"] == "peer" and received["step"] == 3


@pytest.mark.parametrize(("sender_key", "receiver_key"),
                         [("k" * 32, "x" * 32), (None, "k" * 32)],
                         ids=["another key", "sent without a key"])
def test_a_state_without_the_job_key_is_refused(tmp_path, sender_key, receiver_key):
    _solo_run(tmp_path, 3)
    sender, receiver = _hand_started_workers(tmp_path, [sender_key, receiver_key],
                                             "trainer.max_steps=6")
    try:
        assert receiver.wait(120) == WORKER_INPUT_ERROR_EXIT, receiver.output()[-3000:]
        told = receiver.output()
    finally:
        sender.stop()
        receiver.stop()
    assert "refused the training state from rank 0" in told
    assert not list((tmp_path / "node1/tiny/checkpoints").glob("step-*.pt")), "not loaded"
