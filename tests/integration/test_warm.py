"""Warm workers' lifetimes with real jobs: nothing outlives a killed agent, a SIGTERM to the
agent's whole process group (a scheduler's stop) saves the last step, and the cold path
(`elastic.warm_workers=false`) still recovers as before."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from elasticml.train.checkpoint import read_checkpoint
from tests.integration.cluster import (
    Job,
    descendants,
    of_kind,
    run_events,
    train_command,
    wait_for,
)

pytestmark = pytest.mark.integration

LONG = ("trainer.max_steps=400", "faults.step_delay=0.05")


def _running(tmp_path: Path, *overrides: str) -> Job:
    job = Job(train_command("--run-dir", str(tmp_path / "runs"), *overrides), tmp_path / "job.log",
              cwd=tmp_path)
    wait_for(lambda: of_kind(run_events(tmp_path / "runs"), "step", step=5), 120, "step 5")
    return job


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_no_process_outlives_a_killed_agent(tmp_path):
    job = _running(tmp_path, *LONG)
    try:
        below = descendants(job.pid)  # the zygote, the workers, multiprocessing's tracker
        [started] = of_kind(run_events(tmp_path / "runs"), "workers_started")
        assert started["warm"] and set(started["pids"]) <= set(below)
        os.kill(job.pid, signal.SIGKILL)  # the agent alone, not its process group
        wait_for(lambda: not any(_alive(pid) for pid in below), 60,
                 "every process the agent started to end")
    finally:
        job.stop()
    assert not of_kind(run_events(tmp_path / "runs"), "done")


def test_a_sigterm_to_the_agent_s_process_group_stops_the_job_with_its_last_step_saved(
        tmp_path):
    job = _running(tmp_path, *LONG, "trainer.checkpoint_every=0")  # the stop's save is its own
    try:
        below = descendants(job.pid)
        os.killpg(job.pid, signal.SIGTERM)  # agent and zygote; the workers have sessions of
        assert job.wait(120) == 130, job.output()[-3000:]  # their own, the agent stops them
        wait_for(lambda: not any(_alive(pid) for pid in below), 60, "the zygote to end")
    finally:
        job.stop()
    events = run_events(tmp_path / "runs")
    last = max(e["step"] for e in of_kind(events, "step"))
    [saved] = of_kind(events, "checkpoint", reason="signal")
    assert saved["step"] == last and read_checkpoint(saved["path"])["step"] == last


def test_cold_workers_recover_from_a_crash_as_warm_ones_do(tmp_path):
    job = Job(train_command("--run-dir", str(tmp_path / "runs"), "elastic.warm_workers=false",
                            "faults.kill_rank=1", "faults.kill_step=12"),
              tmp_path / "job.log", cwd=tmp_path)
    try:
        assert job.wait(180) == 0, job.output()[-3000:]
    finally:
        job.stop()
    events = run_events(tmp_path / "runs")
    assert {e["warm"] for e in of_kind(events, "workers_started")} == {False}
    assert [r["cause"] for r in of_kind(events, "restart")] == ["failure"]
    resumed = of_kind(events, "resume", restart_count=1)
    assert {e["step"] for e in resumed} == {12} and {e["steps_lost"] for e in resumed} == {0}
    assert {e["step"] for e in of_kind(events, "done")} == {30}
