"""Fast checks of the elasticity pieces that need no processes."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from elasticml.cli import app
from elasticml.errors import UserError
from elasticml.launch.agent import root_cause
from elasticml.launch.watchdog import _waiting_on_peers

TINY = str(Path(__file__).parents[1] / "integration" / "tiny.yaml")


def _dry_run(*args: str):
    return CliRunner().invoke(app, ["train", TINY, "--dry-run", *args])


def _refused(result, message: str) -> None:
    """`main()` turns a UserError into one line and exit status 2."""
    assert isinstance(result.exception, UserError), result.output
    assert result.exception.exit_code == 2 and message in str(result.exception)


def test_dry_run_shows_the_batch_plan_of_every_world_size():
    result = _dry_run("--nnodes", "1:3", "--rdzv-endpoint", "10.0.0.1:29400",
                      "trainer.micro_batch_size=8")
    assert result.exit_code == 0, result.output
    for world, share, accumulation in ((2, 16, 2), (4, 8, 1), (6, 6, 1)):
        line = next(x for x in result.output.splitlines() if f"world {world:>3}:" in x)
        assert f"per rank {share}" in line and f"x {accumulation}," in line
    assert "training_hash=" in result.output and "is_host" not in result.output


def test_dry_run_refuses_a_world_size_it_cannot_serve():
    result = _dry_run("--nnodes", "1:20", "--rdzv-endpoint", "10.0.0.1:29400")
    _refused(result, "global_batch_size=32 is smaller than the world size 34")


def test_linear_policy_scales_batch_and_lr_with_the_world():
    result = _dry_run("--nnodes", "1:2", "--rdzv-endpoint", "10.0.0.1:29400",
                      "trainer.batch_policy=linear")
    assert "world   4: global 64, per rank 16, micro-batch 16 x 1, lr x2" in result.output


def test_a_standalone_store_never_hosts_in_an_agent():
    result = _dry_run("--nnodes", "1:2", "--rdzv-endpoint", "10.0.0.1:29400",
                      "elastic.rdzv.standalone_store=true")
    assert result.exit_code == 0 and "is_host=0" in result.output
    bad = _dry_run("--rdzv-backend", "etcd-v2", "--rdzv-endpoint", "10.0.0.1:2379",
                   "elastic.rdzv.standalone_store=true")
    _refused(bad, "standalone_store")


def test_the_root_cause_is_the_killed_worker_not_the_one_the_agent_stopped():
    stopped = {"rank": 1, "local_rank": 1, "exitcode": -15, "signal": "SIGTERM", "error": "x"}
    errored = {"rank": 2, "local_rank": 0, "exitcode": 1, "signal": None, "error": "gloo"}
    killed = {"rank": 0, "local_rank": 0, "exitcode": -9, "signal": "SIGKILL", "error": None}
    cause = root_cause([stopped, errored, killed], "10.0.0.1")
    assert (cause["failed_rank"], cause["signal"], cause["node"]) == (0, "SIGKILL", "10.0.0.1")
    assert root_cause([stopped, errored], "n")["failed_rank"] == 2


def test_a_worker_blocked_inside_torch_is_waiting_for_a_peer():
    inside = ('Current thread 0x1 (most recent call first):\n'
              '  File "/v/site-packages/torch/autograd/graph.py", line 9 in _engine_run_backward\n'
              '  File "/app/elasticml/train/loop.py", line 1 in _step\n')
    own = ('Current thread 0x1 (most recent call first):\n'
           '  File "/app/elasticml/train/faults.py", line 38 in before_step\n')
    assert _waiting_on_peers(inside) and not _waiting_on_peers(own)


def test_a_hold_file_pauses_before_a_step_until_it_is_gone_or_a_stop_comes(tmp_path):
    import threading
    import time

    from elasticml.recipe.schema import FaultsConfig
    from elasticml.train.faults import FaultInjector

    hold, beats, stop = tmp_path / "hold", [], threading.Event()
    faults = FaultInjector(FaultsConfig(hold_file=str(hold)), 0, 0, print, tmp_path,
                           stopping=stop.is_set, beat=lambda: beats.append(1))
    faults.before_step(1)  # no file: no pause
    assert not beats

    hold.touch()
    threading.Timer(0.5, hold.unlink).start()
    started = time.monotonic()
    faults.before_step(2)
    assert time.monotonic() - started >= 0.5 and not hold.exists()
    assert beats, "a held rank keeps its heartbeat (the hang watchdog reads it)"

    hold.touch()
    threading.Timer(0.3, stop.set).start()
    faults.before_step(3)  # a stop ends the pause although the file is still there
    assert hold.exists() and stop.is_set()
