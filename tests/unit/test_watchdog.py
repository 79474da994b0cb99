"""The hang watchdog with real stuck processes and a fake clock: who it ends and when."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from elasticml.launch.watchdog import HangWatchdog
from elasticml.train.progress import progress_path, stacks_path

CHILD = """
import faulthandler, importlib.util, signal, sys, time
stacks = open(sys.argv[1], "a")
faulthandler.register(signal.SIGUSR1, file=stacks, all_threads=True)
if sys.argv[2] == "waiting":  # blocked in torch's distributed code, as in a collective
    spec = importlib.util.spec_from_file_location("wait", sys.argv[3])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.wait()
print("ready", flush=True)
while True:  # stuck in its own code
    time.sleep(0.05)
"""


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def workers(tmp_path):
    waiting_module = tmp_path / "site" / "torch" / "distributed" / "wait.py"
    waiting_module.parent.mkdir(parents=True)
    waiting_module.write_text("import time\ndef wait():\n    print('ready', flush=True)\n"
                              "    while True:\n        time.sleep(0.05)\n")
    logs = tmp_path / "logs"
    logs.mkdir()
    started = []

    def start(local_rank: int, kind: str):
        stacks = stacks_path(logs, os.getpid(), local_rank)
        process = subprocess.Popen([sys.executable, "-c", CHILD, str(stacks), kind,
                                    str(waiting_module)], stdout=subprocess.PIPE, text=True)
        assert process.stdout.readline().strip() == "ready"
        started.append(process)
        return SimpleNamespace(id=process.pid, local_rank=local_rank, global_rank=local_rank,
                               process=process)

    yield logs, start
    for process in started:
        process.kill()
        process.wait()


def progress(logs: Path, local_rank: int, step: int) -> None:
    path = progress_path(logs, os.getpid(), local_rank)
    path.write_text(f"{step:>20}")
    os.utime(path, (1, 1))  # a clock far off (NFS): modification times must not matter


def test_the_culprit_is_ended_and_the_worker_waiting_on_it_is_left_to_time_out(workers):
    logs, start = workers
    clock = Clock()
    culprit, waiting = start(0, "own"), start(1, "waiting")
    dog = HangWatchdog(logs, hang_timeout=5, collective_timeout=10, clock=clock)
    for worker in (culprit, waiting):
        progress(logs, worker.local_rank, 3)
    assert dog.check([culprit, waiting]) == []  # first look: where they are
    for worker in (culprit, waiting):
        progress(logs, worker.local_rank, 4)  # a step completed in this attempt
    assert dog.check([culprit, waiting]) == []
    clock.now += 4.9
    assert dog.check([culprit, waiting]) == [], "not before hang_timeout on the agent's clock"
    clock.now += 0.2
    found = {h.local_rank: h for h in dog.check([culprit, waiting])}
    assert found[0].killed and not found[0].waiting_on_peers
    assert found[1].waiting_on_peers and not found[1].killed
    assert culprit.process.wait(5) == -9
    assert waiting.process.poll() is None, "a worker waiting on a peer would still save"
    clock.now += 19.7
    assert dog.check([waiting]) == [], "its collective gets the time to give up"
    clock.now += 0.3  # hang_timeout + 2 x collective_timeout after it stalled
    [last] = dog.check([waiting])
    assert last.killed and last.waiting_on_peers
    assert waiting.process.wait(5) == -9


def test_progress_keeps_a_worker_alive_and_a_finished_one_is_not_watched(workers):
    logs, start = workers
    clock = Clock()
    worker = start(0, "own")
    dog = HangWatchdog(logs, hang_timeout=2, clock=clock)
    dog.check([worker])
    for step in range(1, 6):
        progress(logs, 0, step)
        clock.now += 1.5
        assert dog.check([worker]) == []
    progress_path(logs, os.getpid(), 0).write_text("5 finished".ljust(20))
    clock.now += 60
    assert dog.check([worker]) == []
    time.sleep(0.1)
    assert worker.process.poll() is None
