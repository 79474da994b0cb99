"""A worker that stops making progress is found, its stacks are saved, and the group goes on."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.cluster import Job, of_kind, run_events, train_command

pytestmark = pytest.mark.integration


def test_a_hung_worker_is_dumped_ended_and_the_group_restarts_without_losing_steps(tmp_path):
    job = Job(train_command("--run-dir", str(tmp_path / "runs"), "faults.hang_rank=1",
                            "faults.hang_step=6", "elastic.hang_timeout=3"),
              tmp_path / "train.log", cwd=tmp_path)
    try:
        assert job.wait(180) == 0, job.output()[-3000:]
    finally:
        job.stop()

    events = run_events(tmp_path / "runs")
    hangs = of_kind(events, "hang")
    [culprit] = [h for h in hangs if h["killed"]]
    assert culprit["rank"] == 1 and not culprit["waiting_on_peers"]
    assert "before_step" in Path(culprit["stacks"]).read_text(), "its stacks were written"
    [restart] = of_kind(events, "restart")
    assert restart["cause"] == "hang" and restart["failed_rank"] == 1
    resumed = of_kind(events, "resume", restart_count=1)
    assert {e["step"] for e in resumed} == {6} and {e["steps_lost"] for e in resumed} == {0}
    assert {e["step"] for e in of_kind(events, "done")} == {30}
