"""Early stopping and encrypted checkpoints in real runs: a recipe that overfits stops early and
reports its best checkpoint; with both on, a crash and a join lose no step, the count goes on
across them, and no checkpoint (nor the state the nodes exchange) is readable without the key,
which appears nowhere."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from elasticml.train.early_stop import EarlyStopping
from elasticml.train.sample_log import read_sample_log
from tests.integration.cluster import (
    Job,
    Nodes,
    assert_same_data,
    env_with_repo,
    of_kind,
    overfit_recipe,
    records_past_a_death,
    run_events,
    train_command,
)

pytestmark = pytest.mark.integration

KEY = base64.b64encode(bytes(range(100, 132))).decode()
BOTH = ("trainer.encrypt_checkpoints=true",)
PATIENCE, MIN_DELTA = 6, 0.001  # overfit.yaml's


def _train(tmp_path: Path, *overrides: str, samples: bool = False) -> tuple[list[dict], str]:
    extra = {"ELASTICML_SAMPLE_LOG": str(tmp_path / "samples")} if samples else {}
    job = Job(train_command("--run-dir", str(tmp_path / "runs"), *BOTH, *overrides,
                            recipe=overfit_recipe(tmp_path)),
              tmp_path / "train.log", env=env_with_repo(ELASTICML_CHECKPOINT_KEY=KEY, **extra),
              cwd=tmp_path)
    try:
        assert job.wait(240) == 0, job.output()[-3000:]
    finally:
        job.stop()
    return run_events(tmp_path / "runs"), job.log.read_text(errors="replace")


def elasticml(*args: str, key: str | None = KEY) -> subprocess.CompletedProcess:
    env = {k: v for k, v in env_with_repo().items() if k != "ELASTICML_CHECKPOINT_KEY"}
    if key:
        env["ELASTICML_CHECKPOINT_KEY"] = key
    return subprocess.run([sys.executable, "-m", "elasticml", *args], capture_output=True,
                          text=True, env=env)


def validations(events: list[dict]) -> list[dict]:
    """The counted validations by step (a step validated again after a restart once)."""
    by_step = {e["step"]: e for e in of_kind(events, "eval", split="val")
               if "early_stopping" in e}
    return [by_step[step] for step in sorted(by_step)]


def assert_one_uninterrupted_count(events: list[dict], patience: int = PATIENCE) -> dict:
    """Every validation's count, and the stop, are those of one uninterrupted count over the
    agreed values, whatever restarts happened in between; returns the `early_stop` event."""
    stop = EarlyStopping("accuracy", patience, MIN_DELTA, True)
    for event in validations(events):
        stopped = stop.update(event["metrics"]["accuracy"], event["step"])
        recorded = event["early_stopping"]
        assert (recorded["stale"], recorded["best_step"]) == (stop.stale, stop.best_step), event
        if stopped:
            break
    [said] = of_kind(events, "early_stop")
    assert stopped and said["step"] == event["step"] and said["best_step"] == stop.best_step
    return said


def assert_sealed(*folders: Path) -> None:
    """Every checkpoint file is encrypted, and the key is in no file of the run dirs."""
    checkpoints = [p for folder in folders for p in folder.rglob("*.pt")]
    assert checkpoints and all(p.read_bytes()[:8] == b"EMLCKPE1" for p in checkpoints)
    for path in (p for folder in folders for p in folder.rglob("*") if p.is_file()):
        blob = path.read_bytes()
        assert KEY.encode() not in blob and base64.b64decode(KEY) not in blob, path


def assert_reports_score_best_pt(run: Path, best_pt: Path | None = None) -> dict:
    """The final reports of `run` are the scores of `best_pt` (default: the run's own)."""
    report = json.loads((run / "reports" / "final.json").read_text())
    scored = elasticml("eval", str(best_pt or run / "checkpoints" / "best.pt"), "--json")
    assert scored.returncode == 0, scored.stderr
    best = json.loads(scored.stdout)
    assert best["step"] == report["weights_step"] == report["best"]["step"]
    assert report["test"]["accuracy"] == best["metrics"]["accuracy"]
    assert report["test"]["loss"] == pytest.approx(best["metrics"]["loss"], rel=1e-5)
    assert report["val"]["accuracy"] == report["best"]["value"]
    return report


def test_a_recipe_that_overfits_stops_early_and_reports_its_best_checkpoint(tmp_path):
    events, output = _train(tmp_path)
    run = tmp_path / "runs" / "tiny"

    said = assert_one_uninterrupted_count(events)
    assert said["step"] < 600 and said["best_step"] < said["step"]
    message = f"stopped early at step {said['step']}: val accuracy did not improve by 0.001 " \
              f"for {PATIENCE} evaluations"
    assert said["message"] == message
    assert {(e["step"], e["reason"]) for e in of_kind(events, "done")} == \
        {(said["step"], "early_stop")}
    assert not of_kind(events, "step", step=said["step"] + 1), "no rank trained on"
    report = assert_reports_score_best_pt(run)
    assert report["stopped_early"]["message"] == message
    assert message in output, "the console says why"
    told = elasticml("report", str(run))
    assert told.returncode == 0 and f"ended       {message}" in told.stdout
    assert_sealed(run)
    assert KEY not in output

    without = elasticml("eval", str(run), key=None)
    assert without.returncode == 2 and without.stderr.count("\n") == 1
    assert "is encrypted and no checkpoint key was given" in without.stderr
    again = elasticml("train", str(tmp_path / "overfit.yaml"), "--run-dir",
                      str(tmp_path / "runs"), *BOTH)
    assert again.returncode == 0 and f"already {message}" in again.stdout


def test_a_crash_between_the_best_and_the_stop_loses_no_step_and_keeps_the_count(tmp_path):
    events, _ = _train(tmp_path, "faults.kill_rank=1", "faults.kill_step=27", samples=True)

    resumed = of_kind(events, "resume", restart_count=1)
    assert {e["step"] for e in resumed} == {27} and {e["steps_lost"] for e in resumed} == {0}
    before = [e for e in validations(events) if e["step"] < 27][-1]
    assert before["early_stopping"]["stale"] >= 1, "the data do their part: the count is running"
    said = assert_one_uninterrupted_count(events)
    assert said["step"] > 27, "the stop came after the crash"
    assert_same_data(read_sample_log(tmp_path / "samples"), steps=said["step"],
                     recipe=tmp_path / "overfit.yaml")
    assert_reports_score_best_pt(tmp_path / "runs" / "tiny")
    assert_sealed(tmp_path / "runs" / "tiny")


@pytest.mark.netns
def test_both_on_a_join_and_a_crash_lose_no_step(cluster, store, tmp_path):
    """Node A trains alone; node B joins (it gets the state over the network, encrypted and
    sealed); then B's worker is SIGKILLed. Each node has its own disk: B never holds the
    best.pt of before it joined, so the best model reaches whichever rank needs it from A."""
    samples, hold = tmp_path / "samples", tmp_path / "hold"
    recipe = overfit_recipe(tmp_path)
    nodes = Nodes(cluster, tmp_path, store, "--nnodes", "1:2", "--nproc-per-node", "1",
                  "elastic.rdzv.standalone_store=true", "faults.step_delay=0.1",
                  "elastic.collective_timeout=10", "trainer.early_stopping.patience=30",
                  f"faults.hold_file={hold}", *BOTH,
                  env={"ELASTICML_CHECKPOINT_KEY": KEY, "ELASTICML_SAMPLE_LOG": str(samples)},
                  recipe=recipe)
    try:
        a = nodes.start()
        nodes.stepping(a, 5)
        hold.touch()  # the job waits before each step until B is in
        b = nodes.start()
        nodes.resumed(world_size=2)
        hold.unlink()
        nodes.stepping(b, 1, world_size=2)
        worker = of_kind(nodes.events(b), "start")[-1]["pid"]
        killed_at = time.time()
        os.kill(worker, signal.SIGKILL)
        for job in nodes.jobs.values():
            assert job.wait(300) == 0, job.output()[-3000:]
    finally:
        nodes.stop()

    events = nodes.events()
    assert of_kind(nodes.events(b), "resume", source="peer"), "B got its state from A"
    assert {e["cause"] for e in of_kind(events, "restart")} >= {"membership", "failure"}
    assert {e["steps_lost"] for e in of_kind(events, "resume")} == {0}
    said = assert_one_uninterrupted_count(events, patience=30)
    assert {(e["step"], e["reason"]) for e in of_kind(events, "done")} == \
        {(said["step"], "early_stop")}
    # B's worker died at a moment of its own (perhaps between a step's all-reduce and its line)
    after = next(e for e in of_kind(nodes.events(b), "resume") if e["t"] > killed_at)
    assert_same_data(records_past_a_death(samples, {worker}, after["step"], recipe),
                     steps=said["step"], recipe=recipe)
    leader = next(n for n in (a, b) if (nodes.run_root(n) / "tiny/reports/final.json").exists())
    report = assert_reports_score_best_pt(nodes.run_root(leader) / "tiny",
                                          nodes.run_root(a) / "tiny/checkpoints/best.pt")
    if not (nodes.run_root(b) / "tiny/checkpoints/best.pt").exists():
        assert report["weights_step"] < of_kind(nodes.events(b), "resume")[0]["step"]
    assert_sealed(nodes.run_root(a), nodes.run_root(b))
    for job in nodes.jobs.values():
        assert KEY not in job.log.read_text(errors="replace")
