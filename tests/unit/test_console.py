"""The live view's fold and its plain (not a terminal) output."""

from __future__ import annotations

import io
import re

from elasticml.telemetry.console import LiveConsole, Progress, plain_line
from elasticml.telemetry.events import read_events
from tests.synth import crash_and_join_run


def feed(tmp_path, **flags) -> tuple[Progress, list[str]]:
    run = crash_and_join_run(tmp_path)
    out = io.StringIO()
    progress = Progress("story", node="vm")
    console = LiveConsole(progress, stream=out, **flags)
    assert console.live is None  # a StringIO is not a terminal
    console.feed(read_events(run.path / "events"))
    return progress, out.getvalue().splitlines()


def test_fold_tracks_progress_and_incidents(tmp_path):
    progress, _ = feed(tmp_path)
    assert (progress.step, progress.total, progress.world_size, progress.nodes) == (100, 100, 4, 2)
    assert progress.restarts == 2
    assert progress.last_failure == "step 30, rank 1: injected fault: kill at step 30 (SIGKILL)"
    assert progress.last_change == "join: world size 2 -> 4 at step 60"
    assert progress.last_checkpoint == "step 60 (periodic)"
    assert progress.members == {"vm"}
    assert progress.val == {"loss": 0.1, "accuracy": 0.97}


def test_plain_lines_are_parseable(tmp_path):
    _, lines = feed(tmp_path)
    steps = [line for line in lines if line.startswith("step=")]
    assert len(steps) == 100 and steps[-1].startswith("step=100/100 ")
    fields = dict(item.split("=", 1) for item in steps[-1].split())
    assert fields["world_size"] == "4" and float(fields["loss"]) > 0
    failures = [line for line in lines if line.startswith("failure ")]
    assert failures == ["failure step=30 rank=1 node=vm "
                        "cause='injected fault: kill at step 30 (SIGKILL)'"]
    assert "membership change=join world_size=4 previous=2 nodes=2 step=60" in lines
    assert sum(line.startswith("recovered ") for line in lines) == 2
    assert not any(line.startswith("worker_failed") for line in lines)  # one line per crash


def test_quiet_keeps_failures_and_the_result_verbose_keeps_everything(tmp_path):
    _, quiet = feed(tmp_path / "q", quiet=True)
    assert not any(line.startswith("step=") for line in quiet)
    assert any(line.startswith("failure ") for line in quiet)
    assert quiet[-1].startswith("agent_done status=succeeded")
    _, verbose = feed(tmp_path / "v", verbose=True)
    assert any(line.startswith("worker_failed rank=0") for line in verbose)
    assert any(line.startswith("workers_started") for line in verbose)


def test_eta_from_recent_steps():
    progress = Progress("r")
    for step in range(10, 60, 10):
        progress.fold({"t": 100.0 + step / 10, "kind": "step", "step": step, "total_steps": 100,
                       "loss": 1.0, "lr": 0.1, "world_size": 2})
    assert abs(progress.eta_s() - 5.0) < 1e-6
    assert plain_line({"t": 0, "kind": "step", "step": 1, "loss": None}).startswith("step=1/?")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_mode_draws_the_panel_and_prints_incidents_above_it(tmp_path):
    run = crash_and_join_run(tmp_path)
    out = _Terminal()
    with LiveConsole(Progress("story", node="vm"), stream=out) as console:
        assert console.live is not None
        console.feed(read_events(run.path / "events"))
    text = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", out.getvalue())  # drop colours, cursor moves
    assert "elasticml · story · vm" in text and "100 / 100" in text
    assert "world size    4  (2 nodes: vm)" in text
    assert "failure step=30 rank=1" in text and "membership change=join" in text
    assert "\nstep=" not in text  # no per-step lines under the live panel
