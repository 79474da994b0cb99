"""A world-size change mid-run computes the same model as a run that never changed."""

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
STEPS = 40
FIRST = 15


def _job(tmp_path, name: str, *overrides: str) -> Job:
    env = env_with_repo(ELASTICML_SAMPLE_LOG=str(tmp_path / name / "samples"))
    return Job(train_command("--run-dir", str(tmp_path / name / "runs"),
                             f"trainer.max_steps={STEPS}", *overrides),
               tmp_path / name / "train.log", env=env, cwd=tmp_path)


def test_growing_from_one_to_two_workers_ends_where_two_all_along_do(tmp_path):
    """Tolerance 1e-4: the same samples and the same update, summed in another order."""
    calm = _job(tmp_path, "calm")
    try:
        assert calm.wait(180) == 0, calm.output()[-3000:]
    finally:
        calm.stop()

    # one worker trains the first steps and stops (its final checkpoint), then the same run
    # goes on with two: "raise trainer.max_steps to train on" at a larger world size
    grown = _job(tmp_path, "grown", "elastic.nproc_per_node=1", f"trainer.max_steps={FIRST}")
    try:
        assert grown.wait(180) == 0, grown.output()[-3000:]
    finally:
        grown.stop()
    stopped = max(e["step"] for e in of_kind(run_events(tmp_path / "grown" / "runs"),
                                              "checkpoint"))
    assert stopped == FIRST
    again = _job(tmp_path, "grown", "elastic.nproc_per_node=2")
    try:
        assert again.wait(180) == 0, again.output()[-3000:]
    finally:
        again.stop()

    events = run_events(tmp_path / "grown" / "runs")
    assert {e["world_size"] for e in of_kind(events, "start")} == {1, 2}
    assert {e["step"] for e in of_kind(events, "resume", world_size=2)} == {stopped}
    assert_same_data(read_sample_log(tmp_path / "grown" / "samples"), steps=STEPS)
    final = f"runs/tiny/checkpoints/step-{STEPS}.pt"
    expected = read_checkpoint(tmp_path / "calm" / final)["model"]
    reached = read_checkpoint(tmp_path / "grown" / final)["model"]
    for name, value in expected.items():
        assert (value - reached[name]).abs().max() <= 1e-4, name
