"""A job on a real 3-member etcd cluster with client TLS and users, each member and each
training node in its own network namespace: etcd's leader is killed while two nodes train,
and nodes without the right certificate or password are refused without touching the store."""

from __future__ import annotations

import time

import pytest

from tests.integration.cluster import Job, Nodes, of_kind, train_command
from tests.pki import Authority

pytestmark = [pytest.mark.integration, pytest.mark.netns, pytest.mark.etcd]

STEPS = 80
USER, PASSWORD, ROOT_PASSWORD = "elasticml", "job-password-4f9c", "root-password-77aa"


def _tls(etcd_cluster, ca=None, client=None) -> tuple[str, ...]:
    client = client or etcd_cluster.client
    return ("--rdzv-backend", "etcd", f"elastic.rdzv.ca_cert={ca or etcd_cluster.ca.cert}",
            f"elastic.rdzv.client_cert={client.cert}", f"elastic.rdzv.client_key={client.key}",
            f"elastic.rdzv.user={USER}")


def test_losing_etcds_leader_loses_no_step_and_strangers_are_refused(cluster, etcd_cluster,
                                                                      tmp_path):
    etcd_cluster.enable_auth(USER, PASSWORD, ROOT_PASSWORD)
    leader = etcd_cluster.leader()
    # The leader first: the nodes start on it, so they must move on when it dies.
    members = [leader] + [m for m in etcd_cluster.members if m is not leader]
    endpoint = ",".join(f"{m.addr}:2379" for m in members)
    nodes = Nodes(cluster, tmp_path, endpoint, "--nnodes", "1:2", "--nproc-per-node", "1",
                  f"trainer.max_steps={STEPS}", "faults.step_delay=0.1",
                  "elastic.collective_timeout=10", *_tls(etcd_cluster),
                  env={"ELASTICML_ETCD_PASSWORD": PASSWORD})
    try:
        a, b = nodes.start(), nodes.start()
        nodes.stepping(a, 5, world_size=2)
        killed = etcd_cluster.leader()
        killed_at = time.time()  # the events' clock
        etcd_cluster.kill(killed)
        at_kill = nodes.stepping(a, 0)["step"]
        for job in nodes.jobs.values():
            assert job.wait(240) == 0, job.output()[-3000:]
        assert etcd_cluster.leader() is not killed
    finally:
        nodes.stop()

    for node in (a, b):
        events = nodes.events(node)
        assert {e["step"] for e in of_kind(events, "done")} == {STEPS}
        assert {e["steps_lost"] for e in of_kind(events, "resume")} <= {0}
        after = [e for e in of_kind(events, "step") if e["step"] > at_kill]
        assert after and after[-1]["world_size"] == 2, "both nodes trained on to the end"
        since = [e for e in events if e["t"] >= killed_at]
        assert not of_kind(since, "membership") and not of_kind(since, "restart"), \
            "the etcd election took nobody for lost: training never paused"

        written = [f for f in nodes.run_root(node).rglob("*") if f.is_file()]
        assert written and not any(PASSWORD.encode() in f.read_bytes() for f in written), \
            "the etcd password is nowhere in the run dir"

    before = etcd_cluster.snapshot()
    assert any(key.endswith("/closed") for key in before[1]), "the job's keys are there"
    stranger = Authority(tmp_path / "stranger", "stranger")
    unreadable = tmp_path / "no-such-key.pem"
    attempts = {
        "wrong password": ({"ELASTICML_ETCD_PASSWORD": "not-the-password"}, _tls(etcd_cluster),
                           f"refused user '{USER}': wrong password or no such user"),
        "another CA's client certificate": (
            {"ELASTICML_ETCD_PASSWORD": PASSWORD},
            _tls(etcd_cluster, client=stranger.client("intruder")),
            "refused this node's client certificate"),
        "a CA that did not sign etcd's certificates": (
            {"ELASTICML_ETCD_PASSWORD": PASSWORD}, _tls(etcd_cluster, ca=stranger.cert),
            "certificate is not signed by the CA in elastic.rdzv.ca_cert"),
        "an unreadable certificate": (
            {"ELASTICML_ETCD_PASSWORD": PASSWORD},
            (*_tls(etcd_cluster), f"elastic.rdzv.client_key={unreadable}"),
            "elastic.rdzv.client_key: cannot read"),
    }
    runs, dirs = {}, []
    for what, (env, flags, _) in attempts.items():
        node = cluster.add_node()
        dirs.append(tmp_path / node)
        command = cluster.exec_prefix(node) + train_command(
            "--rdzv-endpoint", endpoint, "--nnodes", "1:2", "--nproc-per-node", "1",
            "--local-addr", cluster.nodes[node], "--run-dir", str(tmp_path / node), *flags)
        runs[what] = Job(command, tmp_path / f"{node}.log", env=cluster.node_env(**env),
                         cwd=tmp_path)
    try:
        for what, (_, _, says) in attempts.items():
            code, output = runs[what].wait(120), runs[what].output()
            assert code == 2, f"{what}: {output[-2000:]}"
            errors = [line for line in output.splitlines() if line.startswith("error:")]
            assert len(errors) == 1 and says in errors[0], f"{what}: {output[-2000:]}"
            assert "Traceback" not in output and PASSWORD not in output
    finally:
        for run in runs.values():
            run.stop()
    assert not any(d.exists() for d in dirs), "refused before anything was written"
    assert etcd_cluster.snapshot() == before, "nothing in the store changed, not even a revision"
