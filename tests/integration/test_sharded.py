"""fsdp and hsdp on one node: resharding across world sizes, crashes, stops, eval and export.

Tolerance 1e-4 wherever two runs are compared: the same samples and the same update, summed in
another order (a reduce-scatter over 3 ranks adds the shares in another order than one over
2, and Adam divides by a square root of those sums).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest
import torch

from elasticml.train.checkpoint import read_checkpoint
from elasticml.train.sharded_checkpoint import read_whole_model
from tests.integration.cluster import (
    Job,
    env_with_repo,
    of_kind,
    run_events,
    train_command,
    wait_for,
)

pytestmark = pytest.mark.integration
STEPS = 30
TOLERANCE = 1e-4


def _train(folder, *overrides: str, timeout: float = 180) -> list[dict]:
    job = Job(train_command("--run-dir", str(folder / "runs"), f"trainer.max_steps={STEPS}",
                            *overrides), folder / "train.log", env=env_with_repo(), cwd=folder)
    try:
        assert job.wait(timeout) == 0, job.output()[-3000:]
    finally:
        job.stop()
    return run_events(folder / "runs")


def _model(folder, step: int = STEPS) -> dict:
    return read_whole_model(folder / "runs" / "tiny" / "checkpoints" / f"step-{step}.dcp")


def _assert_close(expected: dict, reached: dict) -> None:
    assert expected.keys() == reached.keys()
    for name, value in expected.items():
        assert (value - reached[name]).abs().max() <= TOLERANCE, name


@pytest.fixture(scope="module")
def calm(tmp_path_factory):
    """An undisturbed fsdp run on 2 ranks: the run the others must end as."""
    folder = tmp_path_factory.mktemp("calm")
    events = _train(folder, "trainer.strategy=fsdp")
    return folder, events


def test_fsdp_computes_what_ddp_computes(calm, tmp_path):
    folder, events = calm
    assert {e["strategy"] for e in of_kind(events, "start")} == {"fsdp mesh 2 shard"}
    _train(tmp_path)
    plain = read_checkpoint(tmp_path / "runs" / "tiny" / "checkpoints" / f"step-{STEPS}.pt")
    _assert_close(plain["model"], _model(folder))
    # each rank holds half of the parameters and of the optimizer state
    memory = of_kind(events, "memory")
    assert len(memory) == 2
    whole = sum(v.numel() * v.element_size() for v in plain["model"].values())
    assert sum(m["params_bytes"] for m in memory) == whole
    assert all(m["params_bytes"] < 0.75 * whole for m in memory)

    # the ddp run's checkpoints are not silently dropped for a fresh fsdp start
    switched = Job(train_command("--run-dir", str(tmp_path / "runs"), "trainer.max_steps=40",
                                 "trainer.strategy=fsdp"), tmp_path / "switched.log",
                   env=env_with_repo(), cwd=tmp_path)
    try:
        assert switched.wait(120) == 2
        told = switched.output()
    finally:
        switched.stop()
    assert "holds ddp checkpoints (step-*.pt)" in told and "Traceback" not in told


def test_recomputed_activations_change_nothing_and_bf16_trains(calm, tmp_path):
    _train(tmp_path / "recomputed", "trainer.strategy=fsdp",
           "trainer.activation_checkpointing=true")
    _assert_close(_model(calm[0]), _model(tmp_path / "recomputed"))
    events = _train(tmp_path / "bf16", "trainer.strategy=fsdp", "trainer.precision=bf16")
    losses = [e["loss"] for e in of_kind(events, "step")]
    assert len(losses) == STEPS and losses[-1] < losses[0]


def test_a_run_resized_2_3_1_ends_where_the_undisturbed_run_does(calm, tmp_path):
    _train(tmp_path, "trainer.strategy=fsdp", "trainer.max_steps=10")
    _train(tmp_path, "trainer.strategy=fsdp", "trainer.max_steps=20", "elastic.nproc_per_node=3")
    events = _train(tmp_path, "trainer.strategy=fsdp", "elastic.nproc_per_node=1")

    resumed = {(e["world_size"], e["step"], e["steps_lost"]) for e in of_kind(events, "resume")}
    assert resumed == {(2, 0, 0), (3, 10, 0), (1, 20, 0)}
    _assert_close(_model(calm[0]), _model(tmp_path))


@pytest.mark.parametrize("strategy", ["fsdp", "hsdp"])
def test_a_crash_resumes_from_the_newest_sharded_checkpoint_and_counts_the_steps_lost(
        calm, tmp_path, strategy):
    """A worker's shards die with it: the group goes back to the newest checkpoint on disk
    (step 10) and the report counts the steps lost; replayed on the same samples, the run
    ends as the calm one."""
    kill = 16
    events = _train(tmp_path, f"trainer.strategy={strategy}", "faults.kill_rank=1",
                    f"faults.kill_step={kill}")
    restarts = of_kind(events, "restart")
    assert [r["cause"] for r in restarts] == ["failure"]
    # Saves are written in the background and announced once on disk: one still being written
    # when the rank died is neither announced nor used (the one of step 10 nearly always is).
    saved = [e["step"] for e in of_kind(events, "checkpoint", restart_count=0)
             if e["reason"] != "best"]
    newest = max(saved, default=0)
    resumed = of_kind(events, "resume", restart_count=1)
    assert {e["step"] for e in resumed} == {newest}
    assert {e["source"] for e in resumed} == ({"checkpoint"} if newest else {"fresh"})
    assert {e["steps_lost"] for e in resumed} == {kill - newest}
    _assert_close(_model(calm[0]), _model(tmp_path))

    report = subprocess.run([sys.executable, "-m", "elasticml", "report",
                             str(tmp_path / "runs" / "tiny"), "--json"],
                            capture_output=True, text=True, env=env_with_repo())
    assert report.returncode == 0, report.stderr
    assert json.loads(report.stdout)["steps_lost"] == kill - newest


def test_a_sigterm_stops_every_rank_at_one_step_and_the_same_command_resumes_there(
        calm, tmp_path):
    """The stop is agreed (the ranks all-reduce the flag at each step boundary), so the shards
    saved are those of one step, and nothing is lost."""
    command = train_command("--run-dir", str(tmp_path / "runs"), f"trainer.max_steps={STEPS}",
                            "trainer.strategy=fsdp", "faults.step_delay=0.1",
                            "trainer.checkpoint_every=0")
    job = Job(command, tmp_path / "train.log", env=env_with_repo(), cwd=tmp_path)
    try:
        wait_for(lambda: of_kind(run_events(tmp_path / "runs"), "step", step=8), 120,
                 "step 8")
        job.process.send_signal(signal.SIGTERM)
        assert job.wait(120) != 0
    finally:
        job.stop()
    [saved] = of_kind(run_events(tmp_path / "runs"), "checkpoint")
    assert saved["reason"] == "signal" and saved["step"] >= 8

    again = Job(command, tmp_path / "again.log", env=env_with_repo(), cwd=tmp_path)
    try:
        assert again.wait(180) == 0, again.output()[-3000:]
    finally:
        again.stop()
    resumed = of_kind(run_events(tmp_path / "runs"), "resume", step=saved["step"])
    assert len(resumed) == 2 and {e["steps_lost"] for e in resumed} == {0}
    _assert_close(_model(calm[0]), _model(tmp_path))


def test_eval_and_export_read_a_sharded_checkpoint_at_any_process_count(calm, tmp_path):
    folder, events = calm
    run = folder / "runs" / "tiny"
    [done] = [e for e in of_kind(events, "done") if e["rank"] == 0]
    scores = []
    for nproc in ("1", "2"):
        answer = subprocess.run([sys.executable, "-m", "elasticml", "eval", str(run), "--json",
                                 "--nproc", nproc], capture_output=True, text=True,
                                env=env_with_repo(), cwd=tmp_path)
        assert answer.returncode == 0, answer.stderr
        scores.append(json.loads(answer.stdout))
    assert scores[0]["step"] == STEPS and scores[0]["checkpoint"].endswith(f"step-{STEPS}.dcp")
    assert scores[0]["metrics"]["accuracy"] == pytest.approx(done["metrics"]["test"]["accuracy"])
    assert scores[1]["metrics"]["accuracy"] == pytest.approx(scores[0]["metrics"]["accuracy"])

    out = tmp_path / "model.pt"
    exported = subprocess.run([sys.executable, "-m", "elasticml", "checkpoints", "export",
                               str(run), "-o", str(out)], capture_output=True, text=True,
                              env=env_with_repo(), cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    weights = torch.load(out, weights_only=True)
    _assert_close(_model(folder), weights)


def test_an_early_stop_scores_the_best_sharded_model(tmp_path):
    events = _train(tmp_path, "trainer.strategy=fsdp", "trainer.eval_every=5",
                    "trainer.early_stopping.patience=1", "trainer.max_steps=200")
    [done] = [e for e in of_kind(events, "done") if e["rank"] == 0]
    best = [e for e in of_kind(events, "checkpoint", reason="best")]
    assert done["reason"] == "early_stop" and done["step"] < 200
    assert done["weights_step"] == best[-1]["step"] < done["step"]
    assert (tmp_path / "runs" / "tiny" / "checkpoints" / "best.dcp" / "state.pt").is_file()
