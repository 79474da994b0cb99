"""A real 2-worker run with an injected crash, read back by `report` and by TensorBoard."""

from __future__ import annotations

import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.helpers import RECIPES, run_elasticml

pytestmark = pytest.mark.integration


def test_report_and_tensorboard_after_a_crash(workdir):
    result = run_elasticml("train", str(RECIPES / "digits.yaml"), "trainer.max_steps=60",
                           "trainer.eval_every=20", "trainer.checkpoint_every=10",
                           "faults.kill_rank=1", "faults.kill_step=20", "--run-id", "crash",
                           cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    failure_lines = [line for line in result.stdout.splitlines() if line.startswith("failure ")]
    assert len(failure_lines) == 1 and failure_lines[0].startswith("failure step=20 rank=1 ")

    report = run_elasticml("report", "--json", cwd=workdir)  # the latest run under runs/
    assert report.returncode == 0, report.stderr
    body = json.loads(report.stdout)
    assert body["run_id"] == "crash" and body["status"] == "succeeded"
    assert body["steps"] == 60 and body["restarts"] == 1
    assert len(body["failures"]) == 1
    failure = body["failures"][0]
    assert failure["rank"] == 1 and failure["signal"] == "SIGKILL" and failure["injected"]
    assert failure["cause"] == "injected fault: kill at step 20 (SIGKILL)"
    assert [m["world_size"] for m in body["membership"]] == [2]
    assert body["recoveries"][0]["resumed_step"] == 20 and body["steps_lost"] == 0
    assert 0 < body["downtime_s"] < 60
    assert body["samples_per_s"] > 0 and body["metrics"]["test"]["accuracy"] > 0.5

    text = run_elasticml("report", "crash", "--html", "r.html", cwd=workdir)
    assert text.returncode == 0 and "rank 1 on" in text.stdout
    assert (workdir / "r.html").read_text().count("<svg") == 3

    acc = EventAccumulator(str(workdir / "runs" / "crash" / "tensorboard"),
                           size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    loss_steps = [e.step for e in acc.Scalars("train/loss")]
    assert loss_steps == sorted(set(loss_steps)) and loss_steps[-1] == 60
    assert [e.step for e in acc.Scalars("elastic/failures")] == [20]
    assert {"val/accuracy", "test/accuracy", "train/samples_per_s", "elastic/restarts",
            "elastic/downtime_s"} <= set(acc.Tags()["scalars"])
