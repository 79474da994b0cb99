"""Warm workers: the environment torch's agent gives a worker, and `WarmWorkers` starting,
polling and closing real processes forked from a fork server as torch's own context does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from torch.distributed.elastic.agent.server import local_elastic_agent
from torch.distributed.elastic.agent.server.api import Worker, WorkerGroup, WorkerSpec
from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, Std

from elasticml.launch import warm, zygote
from elasticml.launch.agent import ObservingAgent, describe_failure
from elasticml.telemetry.events import EventLog, read_events
from elasticml.train.progress import AGENT_PID_ENV, agent_pid
from tests.integration.cluster import env_with_repo, of_kind
from tests.unit.warm_targets import behave

pytestmark = pytest.mark.skipif(not zygote.available(), reason="warm workers need Linux")
AGENT_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)


@pytest.fixture(autouse=True)
def _own_signal_handlers():
    """Starting workers installs torch's agent signal handlers in this process: put ours back."""
    saved = {signum: signal.getsignal(signum) for signum in AGENT_SIGNALS}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


class _Handler:
    use_agent_store = False

    def get_run_id(self) -> str:
        return "run7"


def _group(local_world_size: int = 2) -> WorkerGroup:
    spec = WorkerSpec(role="trainer", local_world_size=local_world_size,
                      entrypoint=sys.executable, args=("-u", "-m", "elasticml.train.worker",
                                                       "r.yaml", "--training-hash", "h"),
                      rdzv_handler=_Handler(), max_restarts=5, monitor_interval=0.1)
    group = WorkerGroup(spec)
    group.group_rank, group.group_world_size, group.store = 1, 2, object()
    group.master_addr, group.master_port = "10.0.0.1", 29511
    group.workers = [Worker(local_rank=i, global_rank=2 + i, role_rank=2 + i, world_size=4,
                            role_world_size=4) for i in range(local_world_size)]
    return group


class _Started:
    def pids(self) -> dict[int, int]:
        return {0: 11, 1: 12}


def test_a_warm_worker_gets_the_environment_and_arguments_torch_gives_a_cold_one(
        tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    logs = DefaultLogsSpecs(log_dir=str(tmp_path / "logs"), redirects=Std.ALL)
    cold = local_elastic_agent.LocalElasticAgent(_group().spec, logs_specs=logs)
    cold._remaining_restarts = 3
    seen = {}
    monkeypatch.setattr(local_elastic_agent, "start_processes",
                        lambda **kwargs: seen.update(kwargs) or _Started())
    cold._start_workers(_group())

    agent = ObservingAgent(_group().spec, logs_specs=logs, events=EventLog(tmp_path, "agent"),
                           warm_args=("r.yaml", "--training-hash", "h"))
    agent._remaining_restarts = 3
    made = {}

    class Recorded(_Started):
        def __init__(self, name, args, envs, logs_specs, grace):
            made.update(name=name, args=args, envs=envs)

        def start(self) -> None:
            pass

    monkeypatch.setattr(warm, "WarmWorkers", Recorded)
    agent._start_workers(_group())

    assert made["envs"] == seen["envs"]
    assert made["envs"][1]["RANK"] == "3" and made["envs"][1]["TORCHELASTIC_RESTART_COUNT"] == "2"
    assert {rank: ("-u", "-m", "elasticml.train.worker", *args)
            for rank, args in made["args"].items()} == seen["args"]
    assert made["name"] == seen["name"]


def test_without_a_zygote_to_fork_from_workers_start_cold_with_a_warning(tmp_path,
                                                                          monkeypatch):
    logs = DefaultLogsSpecs(log_dir=str(tmp_path / "logs"), redirects=Std.ALL)
    events = EventLog(tmp_path / "events", "agent")
    agent = ObservingAgent(_group().spec, logs_specs=logs, events=events,
                           warm_args=("r.yaml", "--training-hash", "h"))
    agent._worker_group = _group()
    closed = []

    class Broken:
        def __init__(self, *args, **kwargs) -> None:
            pass

        def start(self) -> None:
            raise warm.NoZygote("ConnectionRefusedError: no fork server")

        def close(self, timeout: float) -> None:
            closed.append(timeout)

    monkeypatch.setattr(warm, "WarmWorkers", Broken)
    seen = {}
    monkeypatch.setattr(local_elastic_agent, "start_processes",
                        lambda **kwargs: seen.update(kwargs) or _Started())
    assert agent._start_workers(_group()) == {0: 11, 1: 12}
    assert seen["entrypoint"] == sys.executable and closed, "cold, nothing warm left running"
    assert agent.warm_args is None, "and cold from now on"
    [warning] = of_kind(read_events(tmp_path / "events"), "warning")
    assert "no fork server" in warning["message"]
    [started] = of_kind(read_events(tmp_path / "events"), "workers_started")
    assert started["warm"] is False


def test_an_error_that_is_not_the_zygote_s_is_not_blamed_on_it(tmp_path, monkeypatch):
    """A full disk while making a worker's log directory is not a reason to start cold."""
    logs = DefaultLogsSpecs(log_dir=str(tmp_path / "logs"), redirects=Std.ALL)
    agent = ObservingAgent(_group().spec, logs_specs=logs,
                           events=EventLog(tmp_path / "events", "agent"),
                           warm_args=("r.yaml", "--training-hash", "h"))

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(warm, "WarmWorkers", full)
    with pytest.raises(OSError, match="No space"):
        agent._start_workers(_group())
    assert agent.warm_args is not None
    assert not of_kind(read_events(tmp_path / "events"), "warning")


FAILING_ZYGOTE = """
import multiprocessing, os
from multiprocessing import forkserver
from elasticml.launch import zygote
os.environ["ELASTICML_AGENT_PID"] = "1"  # the zygote dies at once: that is not its parent
multiprocessing.set_forkserver_preload(list(zygote.PRELOAD))
forkserver.ensure_running()
try:
    zygote.wait_ready()
except (OSError, EOFError) as err:
    print("raised", type(err).__name__)
"""


def test_waiting_for_a_zygote_that_cannot_start_raises_instead_of_hanging(tmp_path):
    """What the agent's fallback to cold workers relies on (in its own process: the fork
    server is one per process)."""
    done = subprocess.run([sys.executable, "-c", FAILING_ZYGOTE], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path, env=env_with_repo())
    assert done.stdout.startswith("raised"), done.stdout + done.stderr


def _workers(tmp_path, *behaviours: str, grace: float = 5.0) -> warm.WarmWorkers:
    logs = DefaultLogsSpecs(log_dir=str(tmp_path / "logs"), redirects=Std.ALL)
    envs = {rank: {"RANK": str(rank), "LOCAL_RANK": str(rank), "MARKER": "warm"}
            for rank in range(len(behaviours))}
    started = warm.WarmWorkers("trainer", {rank: (b,) for rank, b in enumerate(behaviours)},
                               envs, logs, grace=grace, target=behave)
    started.start()
    return started


def _result(workers: warm.WarmWorkers, seconds: float = 60.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        result = workers.wait(0)
        if result is not None:
            return result
        time.sleep(0.05)
    raise AssertionError("the workers did not finish")


def test_a_forked_worker_is_set_up_as_a_fresh_one(tmp_path, monkeypatch):
    monkeypatch.setenv("INHERITED", "yes")
    workers = _workers(tmp_path, "report")
    try:
        result = _result(workers)
    finally:
        workers.close()
    assert not result.is_failed() and result.return_values == {0: None}
    seen = json.loads(Path(workers.stdouts[0]).read_text())
    assert Path(workers.stderrs[0]).read_text() == "to stderr\n"
    assert seen["pid"] == workers.pids()[0]
    assert seen["sid"] == seen["pid"], "a session of its own, as torch gives its workers"
    assert seen["ppid"] != os.getpid(), "a child of the fork server, not of the agent"
    assert seen["threads"] == 1, "no thread crossed the fork"
    assert seen["name"] == "eml-worker-0", "what `ps -o comm` shows"
    assert seen["sigterm"] == str(signal.SIG_DFL) and seen["sigint"] and not seen["blocked"]
    assert seen["env"]["INHERITED"] == "yes" and seen["env"]["MARKER"] == "warm"
    assert seen["env"]["TORCHELASTIC_ERROR_FILE"] == workers.error_files[0]


def _ran(tmp_path, *behaviours: str):
    """Start workers that behave as told and wait for their result."""
    workers = _workers(tmp_path, *behaviours)
    try:
        return _result(workers)
    finally:
        workers.close()


def test_every_failure_is_recorded_and_the_others_are_stopped(tmp_path):
    result = _ran(tmp_path, "sleep", "sigkill")
    codes = {rank: failure.exitcode for rank, failure in result.failures.items()}
    assert codes == {0: -signal.SIGTERM, 1: -signal.SIGKILL}, "the other one was stopped"
    assert describe_failure(1, result.failures[1])["signal"] == "SIGKILL"


def test_an_exit_status_is_the_worker_s_own(tmp_path):
    result = _ran(tmp_path, "exit:3")
    assert describe_failure(0, result.failures[0])["error"] == "exited with code 3"


def test_a_sigterm_sent_before_the_set_up_is_not_lost(tmp_path):
    result = _ran(tmp_path, "early-sigterm")
    assert result.failures[0].exitcode == -signal.SIGTERM


def _ready(workers: warm.WarmWorkers) -> None:
    """Wait until every worker is set up and running its behaviour."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if all(os.path.exists(path) and Path(path).read_text() == "ready\n"
               for path in workers.stdouts.values()):
            return
        time.sleep(0.05)
    raise AssertionError("the workers did not start")


def test_a_worker_that_ignores_sigterm_is_killed_after_the_grace(tmp_path):
    workers = _workers(tmp_path, "ignore-sigterm", grace=0.5)
    try:
        _ready(workers)
        workers.close(signal.SIGTERM, timeout=0.5)
        assert workers.wait(0).failures[0].exitcode == -signal.SIGKILL
    finally:
        workers.close(signal.SIGKILL, timeout=5)


def _group_members(pgid: int) -> list[int]:
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def test_closing_a_worker_ends_what_it_started_too(tmp_path):
    """As torch signals a cold worker's process group: its DataLoader workers, for one."""
    workers = _workers(tmp_path, "with-child")
    try:
        _ready(workers)
        pid = workers.pids()[0]
        assert len(_group_members(pid)) == 2, "the worker and its child"
        workers.close(signal.SIGTERM, timeout=10)
        deadline = time.monotonic() + 10
        while _group_members(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _group_members(pid)
    finally:
        workers.close(signal.SIGKILL, timeout=5)


def test_without_pidfds_a_worker_is_still_stopped(tmp_path, monkeypatch):
    """A kernel before 5.3, or a sandbox that refuses `pidfd_open`: the pid is signalled."""

    def refused(pid, flags=0):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "pidfd_open", refused)
    assert not zygote.available(), "such a node starts its workers cold"
    workers = _workers(tmp_path, "sleep")
    try:
        _ready(workers)
        pid = workers.pids()[0]
        workers.close(signal.SIGTERM, timeout=10)
        assert not _alive(pid)
    finally:
        workers.close(signal.SIGKILL, timeout=5)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_warm_worker_dies_with_its_zygote(tmp_path):
    workers = _workers(tmp_path, "sleep")
    try:
        _ready(workers)
        pid = workers.pids()[0]
        parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        os.kill(parent, signal.SIGKILL)  # the fork server of this test process
        result = _result(workers, 30)
        deadline = time.monotonic() + 30
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid)
    finally:
        workers.close()
    assert result.failures[0].exitcode == 255, "no exit status without the fork server"


def test_progress_files_are_named_after_the_agent_not_the_zygote(monkeypatch):
    monkeypatch.setenv(AGENT_PID_ENV, "4242")
    assert agent_pid() == 4242
    monkeypatch.delenv(AGENT_PID_ENV)
    assert agent_pid() == os.getppid()  # a cold worker under torchrun: its parent


def test_the_launch_environment_is_set_for_the_agent_and_its_workers(monkeypatch):
    for name in ("OMP_NUM_THREADS", "ELASTICML_STOP_GRACE", AGENT_PID_ENV):
        monkeypatch.setenv(name, "before")  # put back as it was after the test
    plan = SimpleNamespace(env={"OMP_NUM_THREADS": "2"}, stop_grace=12.5, warm_workers=False)
    assert zygote.prepare(plan) is False, "cold workers: no zygote"
    assert os.environ["OMP_NUM_THREADS"] == "2" and os.environ["ELASTICML_STOP_GRACE"] == "12.5"
    assert os.environ[AGENT_PID_ENV] == str(os.getpid())
