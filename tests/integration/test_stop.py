"""SIGTERM (a preemption, or the agent stopping its workers) during a validation or the final
evaluations: the workers stop at once, the state of the last completed step is written once
for the node, and the next start finishes the run."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from elasticml.train.checkpoint import read_checkpoint
from tests.helpers import final_report
from tests.integration.cluster import (
    Job,
    of_kind,
    run_events,
    train_command,
    wait_for,
    with_model,
)

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(("where", "eval_every", "stopped_at"),
                         [("validation", 5, 5), ("final evaluation", 0, 8)])
def test_a_sigterm_while_evaluating_stops_saves_once_and_the_run_finishes_later(
        tmp_path, where, eval_every, stopped_at):
    stall = tmp_path / "stall"
    stall.touch()  # while it exists, every evaluation of both workers stalls
    recipe = with_model(tmp_path, {"_target_": "user_code.StallingMLP", "features": 64,
                                   "classes": 10, "stall_file": str(stall)})
    command = train_command("--run-dir", str(tmp_path / "runs"), "trainer.max_steps=8",
                            f"trainer.eval_every={eval_every}", "trainer.checkpoint_every=0",
                            recipe=recipe)
    job = Job(command, tmp_path / "first.log", cwd=tmp_path)
    try:
        wait_for(Path(f"{stall}.reached").exists, 120, f"the {where} to stall")
        job.process.send_signal(signal.SIGTERM)
        assert job.wait(120) == 130, job.output()[-3000:]
    finally:
        job.stop()
    events = run_events(tmp_path / "runs")
    assert not of_kind(events, "done")
    [saved] = of_kind(events, "checkpoint", reason="signal")  # one writer for the node
    assert saved["step"] == stopped_at
    assert read_checkpoint(saved["path"])["step"] == stopped_at

    stall.unlink()
    again = Job(command, tmp_path / "second.log", cwd=tmp_path)
    try:
        assert again.wait(180) == 0, again.output()[-3000:]
    finally:
        again.stop()
    events = run_events(tmp_path / "runs")
    resumed = [e for e in of_kind(events, "resume") if e["t"] > saved["t"]]
    assert {e["step"] for e in resumed} == {stopped_at}
    assert {e["steps_lost"] for e in resumed} == {0}
    assert {e["step"] for e in of_kind(events, "done")} == {8}
    assert final_report(tmp_path / "runs" / "tiny")["step"] == 8
