"""Fixtures for the elasticity tests: network-namespace clusters, a real etcd server and a real
Slurm cluster."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.integration.cluster import (
    Cluster,
    Job,
    free_port,
    netns_available,
    train_command,
    wait_for,
)
from tests.integration.etcd import EtcdCluster, EtcdServer
from tests.integration.slurm import SlurmCluster, install_slurm


@pytest.fixture
def cluster():
    reason = netns_available()
    if reason:
        pytest.skip(reason)
    made = Cluster()
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def store(cluster, tmp_path):
    """`elasticml rendezvous serve` on the host side of the bridge (not a training node)."""
    port = free_port(cluster.host_addr)
    job = Job([*train_command()[:3], "rendezvous", "serve", "--host", cluster.host_addr,
               "--port", str(port)], tmp_path / "store.log")
    try:
        wait_for(lambda: "serving" in job.output(), 30, "the rendezvous store")
        yield f"{cluster.host_addr}:{port}"
    finally:
        job.stop()


@pytest.fixture(scope="session")
def etcd_binary() -> str:
    """Debian's etcd 3.4 (it still serves the v2 API); installed here when missing."""
    found = shutil.which("etcd")
    if found is None:
        if shutil.which("apt-get") is None:
            pytest.skip("etcd is not installed and apt-get is not available to install it")
        env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        for step in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q",
                                                   "etcd-server"]):
            done = subprocess.run(step, capture_output=True, text=True, env=env)
            if done.returncode != 0:
                pytest.fail(f"{' '.join(step)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
        found = shutil.which("etcd")
    assert found, "etcd-server installed but no `etcd` on PATH"
    return found


@pytest.fixture
def etcd(cluster, etcd_binary, tmp_path):
    """An etcd with the v2 API on the cluster's host address; yields its `host:port`."""
    host = cluster.host_addr
    client, peer = free_port(host), free_port(host)
    job = Job([etcd_binary, "--enable-v2", "--name", "eml", "--data-dir", str(tmp_path / "etcd"),
               "--listen-client-urls", f"http://{host}:{client}",
               "--advertise-client-urls", f"http://{host}:{client}",
               "--listen-peer-urls", f"http://{host}:{peer}",
               "--initial-advertise-peer-urls", f"http://{host}:{peer}",
               "--initial-cluster", f"eml=http://{host}:{peer}"],
              tmp_path / "etcd.log", env={"ETCD_UNSUPPORTED_ARCH": "", "PATH": "/usr/bin:/bin"})
    try:
        wait_for(lambda: "ready to serve client requests" in job.output(), 30, "etcd to start")
        yield f"{host}:{client}"
    finally:
        job.stop()


@pytest.fixture
def etcd_v3(etcd_binary, tmp_path):
    """One etcd member on loopback, plain HTTP, without `--enable-v2` (v3 API only)."""
    server = EtcdServer(etcd_binary, tmp_path / "etcd-v3")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def etcd_cluster(cluster, etcd_binary, tmp_path):
    """Three etcd members, each in a network namespace of `cluster`, with client and peer
    TLS (clients need a certificate of the test's CA); no users yet."""
    made = None
    try:
        made = EtcdCluster(cluster, etcd_binary, tmp_path / "etcd-cluster")
        yield made
    finally:
        if made is not None:
            made.stop()


@pytest.fixture(scope="session")
def slurm_installed() -> None:
    """Debian's Slurm 22.05 and munge, installed here when missing."""
    reason = netns_available()  # checked first: session fixtures are set up before `cluster`
    if reason:
        pytest.skip(reason)
    try:
        reason = install_slurm()
    except RuntimeError as err:
        pytest.fail(str(err))
    if reason:
        pytest.skip(reason)


@pytest.fixture
def slurm(cluster, slurm_installed):
    """slurmctld and two slurmd nodes, each in a network namespace of `cluster`."""
    made = SlurmCluster(cluster, 2)
    try:
        made.start()
        yield made
    finally:
        made.close()
