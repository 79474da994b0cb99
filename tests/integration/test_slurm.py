"""The exported sbatch script on a real Slurm cluster: two nodes train, one node dies (its
slurmd and every process on it), the other goes on alone and the job ends COMPLETED."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.cluster import TINY, env_with_repo, of_kind, run_events, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.netns, pytest.mark.slurm,
              pytest.mark.timeout(600)]

STEPS = 80
DONE_STATES = ("COMPLETED", "FAILED", "CANCELLED", "NODE_FAIL", "TIMEOUT", "OUT_OF_MEMORY",
               "PREEMPTED", "BOOT_FAIL", "DEADLINE")


def agent_job_keys(slurm, node: str) -> set[str]:
    """ELASTICML_JOB_KEY of every `elasticml train` process on `node`."""
    keys = set()
    for pid in slurm.cluster.pids(node):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"elasticml" in command and b"train" in command:
            keys |= {v.split(b"=", 1)[1].decode() for v in environ
                     if v.startswith(b"ELASTICML_JOB_KEY=")}
    return keys


def test_exported_job_survives_a_node_and_completes(slurm, tmp_path):
    script = tmp_path / "tiny.sbatch"
    export = subprocess.run(
        [sys.executable, "-m", "elasticml", "export", "slurm", str(TINY), "-o", str(script),
         "--nnodes", "1:2", "--nproc-per-node", "1", f"trainer.max_steps={STEPS}",
         "faults.step_delay=0.1", "elastic.collective_timeout=10"],
        capture_output=True, text=True, env=env_with_repo())
    assert export.returncode == 0, export.stderr
    environ = env_with_repo()
    environ.pop("ELASTICML_JOB_KEY", None)
    job = slurm.sbatch(script, tmp_path, environ)
    try:
        check_job(slurm, job, tmp_path)
    finally:  # the script's copy of the recipe on the nodes (all share this machine's /tmp)
        Path(f"/tmp/elasticml-{job}.yaml").unlink(missing_ok=True)


def check_job(slurm, job: int, tmp_path: Path) -> None:
    runs = tmp_path / "runs"

    def both_training():
        steps = of_kind(run_events(runs), "step", world_size=2)
        return steps and steps[-1]["step"] >= 5

    wait_for(both_training, 180, "both Slurm nodes to train together")
    state = slurm.job_state(job)
    head = state["BatchHost"]
    [other] = [n for n in slurm.compute if n != head]
    [key] = agent_job_keys(slurm, head)
    assert agent_job_keys(slurm, other) == {key}, "one job key, on every node"
    assert re.fullmatch(r"[0-9a-f]{64}", key)
    last_together = of_kind(run_events(runs), "step", world_size=2)[-1]["step"]
    killed_at = time.time()
    slurm.kill_node(other)

    final = wait_for(lambda: (s := slurm.job_state(job))["JobState"] in DONE_STATES and s,
                     240, "the job to end")
    output = (tmp_path / f"tiny-{job}.out").read_text()
    assert (final["JobState"], final["ExitCode"]) == ("COMPLETED", "0:0"), output[-3000:]
    assert f"Node failure on {other}" in output

    events = run_events(runs)
    after = [e for e in events if e["t"] >= killed_at]  # the nodes may have started apart
    [change] = of_kind(after, "membership")
    assert (change["node"], change["previous_world_size"], change["world_size"]) == (head, 2, 1)
    [resumed] = of_kind(after, "resume")
    assert resumed["world_size"] == 1
    assert resumed["step"] >= last_together and resumed["steps_lost"] == 0
    assert {e["node"] for e in of_kind(events, "done")} == {head}
    assert {e["step"] for e in of_kind(events, "done")} == {STEPS}

    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert not [p for p in written if key.encode() in p.read_bytes()], "the job key is in a file"
