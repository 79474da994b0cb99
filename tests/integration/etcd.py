"""Real etcd servers for the tests: one member on loopback, or a cluster of members, each in a
network namespace of a `Cluster`, with client TLS, peer TLS and users.

`EtcdServer` runs Debian's etcd 3.4 without `--enable-v2`: only the v3 API is served, as
etcd 3.6 does. `EtcdCluster.enable_auth` adds a root user, a user for the jobs with a role
that may read and write `/elasticml-v3/` only, and turns authentication on.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

from tests.integration.cluster import Cluster, Job, free_port, wait_for
from tests.pki import Authority

PREFIX = "/elasticml-v3/"
ENV = {"ETCD_UNSUPPORTED_ARCH": "", "PATH": "/usr/bin:/bin"}


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class EtcdServer:
    """One member on 127.0.0.1: plain HTTP and the v3 API only, unless asked for the v2 API
    too or for client TLS (clients then need a certificate of `tls`)."""

    def __init__(self, binary: str, folder: Path, v2: bool = False,
                 tls: Authority | None = None) -> None:
        client, peer = free_port(), free_port()
        self.endpoint = f"127.0.0.1:{client}"
        scheme = "https" if tls else "http"
        extra = ["--enable-v2"] if v2 else []
        if tls:
            server = tls.server("server", ["127.0.0.1"])
            extra += ["--cert-file", str(server.cert), "--key-file", str(server.key),
                      "--client-cert-auth", "--trusted-ca-file", str(tls.cert)]
        self.job = Job([binary, "--name", "one", "--data-dir", str(folder / "data"),
                        "--listen-client-urls", f"{scheme}://{self.endpoint}",
                        "--advertise-client-urls", f"{scheme}://{self.endpoint}",
                        "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                        "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                        "--initial-cluster", f"one=http://127.0.0.1:{peer}", *extra],
                       folder / "etcd.log", env=dict(ENV))
        wait_for(lambda: "ready to serve client requests" in self.job.output(), 60,
                 "etcd to start")

    def post(self, path: str, body: dict, token: str | None = None) -> dict:
        import requests

        answer = requests.post(f"http://{self.endpoint}/v3/{path}", json=body, timeout=10,
                               headers={"Authorization": token} if token else {})
        answer.raise_for_status()
        return answer.json()

    def stop(self) -> None:
        self.job.stop()


@dataclass(frozen=True)
class Member:
    name: str
    node: str
    """The network namespace it runs in."""
    addr: str
    job: Job


class EtcdCluster:
    """`size` members, each in a namespace of `cluster`, with TLS between members and to
    clients (clients must show a certificate of `ca`)."""

    def __init__(self, cluster: Cluster, binary: str, folder: Path, size: int = 3) -> None:
        self.cluster, self.folder = cluster, folder
        nodes = [cluster.add_node() for _ in range(size)]
        addrs = [cluster.nodes[node] for node in nodes]
        self.ca = Authority(folder / "pki", "etcd")
        self.client = self.ca.client("elasticml")
        self.root_client = self.ca.client("admin")
        initial = ",".join(f"m{i}=https://{addr}:2380" for i, addr in enumerate(addrs))
        self.members: list[Member] = []
        for i, (node, addr) in enumerate(zip(nodes, addrs, strict=True)):
            server = self.ca.server(f"m{i}", [addr])
            command = cluster.exec_prefix(node) + [
                binary, "--name", f"m{i}", "--data-dir", str(folder / f"m{i}"),
                "--listen-client-urls", f"https://{addr}:2379",
                "--advertise-client-urls", f"https://{addr}:2379",
                "--listen-peer-urls", f"https://{addr}:2380",
                "--initial-advertise-peer-urls", f"https://{addr}:2380",
                "--initial-cluster", initial, "--initial-cluster-state", "new",
                "--cert-file", str(server.cert), "--key-file", str(server.key),
                "--client-cert-auth", "--trusted-ca-file", str(self.ca.cert),
                "--peer-cert-file", str(server.cert), "--peer-key-file", str(server.key),
                "--peer-client-cert-auth", "--peer-trusted-ca-file", str(self.ca.cert)]
            job = Job(command, folder / f"m{i}.log", env=dict(ENV))
            self.members.append(Member(f"m{i}", node, addr, job))
        for member in self.members:
            wait_for(lambda m=member: "ready to serve client requests" in m.job.output(), 60,
                     f"etcd member {member.name} to start")

    @property
    def endpoint(self) -> str:
        return ",".join(f"{m.addr}:2379" for m in self.members)

    def _post(self, member: Member, path: str, body: dict, token: str | None = None) -> dict:
        import requests

        answer = requests.post(f"https://{member.addr}:2379/v3/{path}", json=body, timeout=10,
                               verify=str(self.ca.cert),
                               cert=(str(self.root_client.cert), str(self.root_client.key)),
                               headers={"Authorization": token} if token else {})
        answer.raise_for_status()
        return answer.json()

    def enable_auth(self, user: str, password: str, root_password: str) -> None:
        first = self.members[0]
        self._root_password = root_password
        steps = [("auth/user/add", {"name": "root", "password": root_password}),
                 ("auth/user/grant", {"user": "root", "role": "root"}),
                 ("auth/user/add", {"name": user, "password": password}),
                 ("auth/role/add", {"name": "elasticml"}),
                 ("auth/role/grant", {"name": "elasticml", "perm": {
                     "permType": "READWRITE", "key": _b64(PREFIX),
                     "range_end": _b64(PREFIX[:-1] + "0")}}),
                 ("auth/user/grant", {"user": user, "role": "elasticml"}),
                 ("auth/enable", {})]
        for path, body in steps:
            self._post(first, path, body)

    def _root_token(self, member: Member) -> str:
        return self._post(member, "auth/authenticate",
                          {"name": "root", "password": self._root_password})["token"]

    def live(self) -> list[Member]:
        return [m for m in self.members if m.job.process.poll() is None]

    def leader(self) -> Member:
        """The member the others follow now (asked of every live member until they agree)."""
        def agreed():
            said = set()
            for member in self.live():
                try:
                    said.add(int(self._post(member, "maintenance/status", {})["leader"]))
                except Exception:  # noqa: BLE001 - a member without a leader yet
                    return None
            if len(said) != 1 or 0 in said:
                return None
            ids = {int(self._post(m, "maintenance/status", {})["header"]["member_id"]): m
                   for m in self.live()}
            return ids.get(said.pop())
        return wait_for(agreed, 60, "the etcd members to agree on a leader")

    def kill(self, member: Member) -> None:
        self.cluster.kill_node(member.node)
        member.job.process.wait(10)

    def snapshot(self) -> tuple[int, dict[str, str]]:
        """(the store's revision, every key under the jobs' prefix and its value), read as
        root: a write of any kind moves the revision."""
        member = self.live()[0]
        token = self._root_token(member)
        answer = self._post(member, "kv/range", {"key": _b64(PREFIX),
                                                 "range_end": _b64(PREFIX[:-1] + "0")}, token)
        contents = {base64.b64decode(kv["key"]).decode(): kv.get("value", "")
                    for kv in answer.get("kvs", [])}
        return int(answer["header"]["revision"]), contents

    def stop(self) -> None:
        for member in self.members:
            member.job.stop()
