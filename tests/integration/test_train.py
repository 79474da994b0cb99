"""Real elastic training runs: 2 workers under torch elastic, resume after a stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import (
    RECIPES,
    elasticml_command,
    events_of,
    final_report,
    run_elasticml,
    this_checkout_env,
)

pytestmark = pytest.mark.integration
DIGITS = str(RECIPES / "digits.yaml")
SHORT = ["trainer.max_steps=40", "trainer.eval_every=20", "trainer.checkpoint_every=10",
         "trainer.log_every=5"]


def test_two_workers_write_a_complete_run_dir(workdir):
    result = run_elasticml("train", DIGITS, *SHORT, cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert "step=40/40" in result.stdout  # plain lines: stdout is not a TTY
    run = workdir / "runs" / "digits"
    assert (run / "recipe.yaml").read_text().count("max_steps: 40") == 1
    starts = events_of(run, "start")
    assert sorted(e["rank"] for e in starts) == [0, 1]
    assert {e["world_size"] for e in starts} == {2}
    steps = [e["step"] for e in events_of(run, "step") if e["rank"] == 0]
    assert steps == [1, *range(5, 41, 5)]
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*.pt")) == [
        "step-20.pt", "step-30.pt", "step-40.pt"]
    assert (run / "checkpoints" / "best.pt").is_file()
    report = final_report(run)
    assert report["step"] == 40 and report["test"]["accuracy"] > 0.8
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert [e["status"] for e in events_of(run, "agent_done")] == ["succeeded"]


def test_a_stopped_run_resumes_where_it_stopped(workdir):
    # far more steps than it can train before the SIGTERM; the resume sets the real end
    command = elasticml_command("train", DIGITS, "trainer.max_steps=100000",
                                "trainer.checkpoint_every=1000", "trainer.log_every=1")
    process = subprocess.Popen(command, cwd=workdir, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, start_new_session=True,
                               env=this_checkout_env())
    run = workdir / "runs" / "digits"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if run.joinpath("events").is_dir() and any(
                    e["step"] >= 30 for e in events_of(run, "step")):
                break
            time.sleep(0.2)
        else:
            pytest.fail("training never reached step 30")
        process.send_signal(signal.SIGTERM)  # the agent stops its workers with SIGTERM
        assert process.wait(timeout=60) != 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    saved = [e for e in events_of(run, "checkpoint") if e["reason"] == "signal"]
    assert saved, "the workers saved nothing on SIGTERM"
    assert len(saved) == 1, "one writer for the node, not one per local rank"
    stopped_at = saved[0]["step"]
    last_logged = max(e["step"] for e in events_of(run, "step"))
    assert stopped_at >= last_logged  # not a single completed step was lost

    result = run_elasticml("train", DIGITS, f"trainer.max_steps={stopped_at + 20}",
                           "trainer.checkpoint_every=1000", "trainer.log_every=50", cwd=workdir)
    assert result.returncode == 0, result.stderr
    resumed = [e for e in events_of(run, "resume") if e["restart_count"] == 0][-2:]
    assert {e["step"] for e in resumed} == {stopped_at}
    assert all(e["steps_lost"] == 0 for e in resumed)
    assert final_report(run)["step"] == stopped_at + 20


def test_corrupt_newest_checkpoint_falls_back_to_the_previous(workdir):
    first = run_elasticml("train", DIGITS, "trainer.max_steps=20", "trainer.checkpoint_every=10",
                          cwd=workdir)
    assert first.returncode == 0, first.stderr
    run = workdir / "runs" / "digits"
    newest = run / "checkpoints" / "step-20.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    again = run_elasticml("train", DIGITS, "trainer.max_steps=30", "trainer.checkpoint_every=10",
                          cwd=workdir)
    assert again.returncode == 0, again.stderr
    resumed = events_of(run, "resume")[-1]
    assert resumed["step"] == 10 and resumed["source"] == "checkpoint"
    warnings = [e["message"] for e in events_of(run, "warning")]
    assert warnings and all("step-20.pt: not an elasticml checkpoint (or truncated)" in w
                            for w in warnings)


def test_dry_run_line_runs_the_same_job_under_plain_torchrun(workdir):
    dry = run_elasticml("train", DIGITS, "trainer.max_steps=10", "--run-id", "pasted",
                        "--dry-run", cwd=workdir)
    assert dry.returncode == 0, dry.stderr
    line = dry.stdout.strip().splitlines()[-1]
    assert " torchrun " in line
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    line = line.replace(" torchrun ", f" {torchrun} ", 1)
    result = subprocess.run(["bash", "-c", line], cwd=workdir, capture_output=True, text=True,
                            timeout=180, env=this_checkout_env())
    assert result.returncode == 0, result.stderr[-3000:]
    run = workdir / "runs" / "pasted"
    assert final_report(run)["step"] == 10
    assert {e["world_size"] for e in events_of(run, "start")} == {2}
