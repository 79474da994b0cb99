"""A real Slurm cluster on one machine: `slurmctld` and one `slurmd` per node, every daemon a
process of the test, every node (the controller's included) a network namespace.

Debian's `slurm-wlm` with `munge`. What it takes on one machine:
* each daemon enters its node with `nsenter --net` (not `ip netns exec`, which remounts /sys,
  and slurmd 22.05 then dies for want of /sys/fs/cgroup), in a UTS namespace of its own with
  the node's name as host name, and a mount namespace of its own where a private hosts file
  is bound over /etc/hosts (the machine's own stays untouched): node names then resolve to
  bridge addresses everywhere, which slurmctld needs to reach `srun` after a node failure;
* one slurmd per node (`MULTIPLE_SLURMD`), each with its own spool dir and PID file;
* a munged of the cluster's own (key, socket) named in slurm.conf (`AuthInfo=socket=...`).
Clients (`sbatch`, `scontrol`) find the cluster through `SLURM_CONF`.
"""

from __future__ import annotations

import random
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.integration.cluster import Cluster, Job, wait_for

DEBIAN_PACKAGES = ("slurm-wlm", "munge")
BINARIES = ("slurmctld", "slurmd", "sbatch", "scontrol", "munged", "mungekey", "nsenter",
            "unshare")


def missing_binaries() -> list[str]:
    return [name for name in BINARIES if shutil.which(name) is None]


def install_slurm() -> str | None:
    """Install Debian's Slurm and munge when missing; None when done, else why not."""
    if not missing_binaries():
        return None
    if shutil.which("apt-get") is None:
        return f"{', '.join(missing_binaries())} missing and apt-get is not available"
    env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    for step in (["apt-get", "update", "-q"],
                 ["apt-get", "install", "-y", "-q", *DEBIAN_PACKAGES]):
        done = subprocess.run(step, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(step)} failed:\n{done.stdout[-2000:]}"
                               f"{done.stderr[-2000:]}")
    left = missing_binaries()
    if left:
        raise RuntimeError(f"installed {' '.join(DEBIAN_PACKAGES)} but {', '.join(left)} "
                           "still missing")
    return None


class SlurmCluster:
    """A controller node and `size` compute nodes named after their network namespaces."""

    PARTITION = "main"

    def __init__(self, cluster: Cluster, size: int, slurmd_timeout: int = 5) -> None:
        self.cluster = cluster
        # Short and world-traversable: munge's socket path must fit in 108 bytes.
        self.home = Path(tempfile.mkdtemp(prefix="emlslurm-"))
        self.home.chmod(0o755)  # munged wants every directory above its socket traversable
        self.jobs: list[Job] = []
        self.controller = cluster.add_node()
        self.compute = [cluster.add_node() for _ in range(size)]
        self.conf = self.home / "slurm.conf"
        self.hosts = self.home / "hosts"
        self.munge_socket = self.home / "munge" / "socket"
        self._write_files(slurmd_timeout)

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def start(self) -> None:
        self._start_munge()
        self.jobs.append(self._in_node(self.controller, ["slurmctld", "-D", "-i", "-f",
                                                         str(self.conf)], "slurmctld"))
        for node in self.compute:
            self.jobs.append(self._in_node(node, ["slurmd", "-D", "-N", node, "-f",
                                                  str(self.conf)], f"slurmd-{node}"))
        wait_for(lambda: self.idle_nodes() == set(self.compute), 60,
                 "every slurmd to register idle")

    def scontrol(self, *args: str) -> str:
        done = subprocess.run(["scontrol", *args], capture_output=True, text=True,
                              env=self._client_env())
        if done.returncode != 0:
            raise AssertionError(f"scontrol {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def idle_nodes(self) -> set[str]:
        try:
            text = self.scontrol("show", "nodes", "-o")
        except AssertionError:
            return set()
        states = dict(re.findall(r"NodeName=(\S+).*?State=(\S+)", text))
        return {node for node, state in states.items() if state.startswith("IDLE")}

    def sbatch(self, script: Path, cwd: Path, env: dict[str, str]) -> int:
        done = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True,
                              text=True, cwd=cwd, env={**env, **self.env})
        if done.returncode != 0:
            raise AssertionError(f"sbatch failed: {done.stderr.strip()}")
        return int(done.stdout.strip().split(";")[0])

    def job_state(self, job_id: int) -> dict[str, str]:
        text = self.scontrol("show", "job", "-o", str(job_id))
        return dict(re.findall(r"(\w+)=(\S*)", text))

    def kill_node(self, node: str) -> None:
        """Every process of that node (its slurmd, slurmstepd and tasks) with SIGKILL."""
        self.cluster.kill_node(node)

    def close(self) -> None:
        for job in reversed(self.jobs):
            job.stop()
        shutil.rmtree(self.home, ignore_errors=True)

    # --- set-up ---------------------------------------------------------------------------

    def _client_env(self) -> dict[str, str]:
        return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **self.env}

    def _write_files(self, slurmd_timeout: int) -> None:
        addrs = self.cluster.nodes
        lines = ["127.0.0.1 localhost"] + [f"{addrs[n]} {n}" for n in
                                           (self.controller, *self.compute)]
        self.hosts.write_text("\n".join(lines) + "\n")
        (self.home / "state").mkdir()
        (self.home / "spool").mkdir()
        conf = [
            "ClusterName=eml",
            f"SlurmctldHost={self.controller}({addrs[self.controller]})",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"StateSaveLocation={self.home / 'state'}",
            f"SlurmdSpoolDir={self.home / 'spool'}/%n",
            f"SlurmctldPidFile={self.home / 'slurmctld.pid'}",
            f"SlurmdPidFile={self.home / 'spool'}/slurmd-%n.pid",
            f"SlurmctldLogFile={self.home / 'slurmctld.log'}",
            f"SlurmdLogFile={self.home / 'slurmd-%n.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "SelectType=select/cons_tres",
            "MpiDefault=none",
            "ReturnToService=2",
            f"SlurmdTimeout={slurmd_timeout}",
            # Job ids name files on the machine (/tmp/elasticml-<id>.yaml): not the usual ones.
            f"FirstJobId={random.randrange(10**6, 10**7)}",
        ]
        conf += [f"NodeName={n} NodeAddr={addrs[n]} CPUs=1 RealMemory=100 State=UNKNOWN"
                 for n in self.compute]
        conf.append(f"PartitionName={self.PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE "
                    "State=UP")
        self.conf.write_text("\n".join(conf) + "\n")

    def _start_munge(self) -> None:
        folder = self.munge_socket.parent
        folder.mkdir()
        folder.chmod(0o755)
        key = folder / "key"
        subprocess.run(["mungekey", "--create", "--keyfile", str(key)], check=True,
                       capture_output=True)
        job = Job(["munged", "--foreground", f"--socket={self.munge_socket}",
                   f"--key-file={key}", f"--pid-file={folder / 'pid'}",
                   f"--log-file={folder / 'log'}", f"--seed-file={folder / 'seed'}"],
                  self.home / "munged.out", env=self._client_env())
        self.jobs.append(job)
        wait_for(self.munge_socket.exists, 30, "munged's socket")

    def _in_node(self, node: str, command: list[str], name: str) -> Job:
        """`command` inside `node`: its network, its own host name and hosts file."""
        inner = (f"hostname {node} && mount --bind {self.hosts} /etc/hosts && "
                 f"exec {' '.join(command)}")
        return Job(["nsenter", f"--net=/run/netns/{node}", "unshare", "--uts", "--mount",
                    "--propagation", "private", "sh", "-c", inner],
                   self.home / f"{name}.out", env=self._client_env())
