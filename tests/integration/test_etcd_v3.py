"""The etcd v3 store against a real etcd 3.4 serving only the v3 API (no `--enable-v2`, as
etcd 3.6 has no v2 at all): the five operations, a member that does not answer, users and
passwords, the handler forming rounds, and torch's exit barrier over it."""

from __future__ import annotations

import base64
import threading

import pytest
import requests
from torch.distributed import PrefixStore
from torch.distributed.elastic.rendezvous import RendezvousError, RendezvousParameters
from torch.distributed.elastic.utils.store import barrier

from elasticml.launch.etcd_access import EtcdAccessError, access_from_conf
from elasticml.launch.etcd_kv import EtcdRefused, EtcdV3KV, check_access
from elasticml.launch.kv import StoreUnreachable
from elasticml.launch.kvstore import KVStore
from elasticml.launch.rendezvous import create_handler
from tests.integration.cluster import free_port
from tests.integration.etcd import EtcdServer
from tests.pki import Authority

pytestmark = [pytest.mark.integration, pytest.mark.etcd]

KEY = "etcd-v3-test-job-key-0123456789abcdef"


def _kv(endpoint: str, **conf) -> EtcdV3KV:
    return EtcdV3KV(access_from_conf(endpoint, conf.get, environ={}))


def test_only_the_v3_api_is_served(etcd_v3):
    assert requests.get(f"http://{etcd_v3.endpoint}/v2/keys", timeout=5).status_code == 404
    assert requests.get(f"http://{etcd_v3.endpoint}/version", timeout=5).json()[
        "etcdserver"].startswith("3.")


def test_the_five_operations(etcd_v3):
    kv = _kv(etcd_v3.endpoint)
    assert kv.get("/elasticml/r/gen") is None
    assert kv.compare_and_set("/elasticml/r/gen", None, b"g0")
    assert not kv.compare_and_set("/elasticml/r/gen", None, b"other"), "exists: not missing"
    assert not kv.compare_and_set("/elasticml/r/gen", b"g9", b"g1"), "holds another value"
    assert kv.compare_and_set("/elasticml/r/gen", b"g0", b"g1")
    assert kv.get("/elasticml/r/gen") == b"g1"
    binary = bytes(range(256))
    kv.set("/elasticml/r/g1/beat/a", binary)
    assert kv.clone().get("/elasticml/r/g1/beat/a") == binary
    kv.set("/elasticml/r/g1/beat/b", b"2")
    kv.set("/elasticml/r/g10/keep", b"x")  # shares the text prefix "g1", not the folder
    kv.delete(["/elasticml/r/g1/beat/a", "/elasticml/r/never"])
    assert kv.get("/elasticml/r/g1/beat/a") is None and kv.get("/elasticml/r/g1/beat/b") == b"2"
    kv.delete_prefix("/elasticml/r/g1/")
    assert kv.contents() == {"/elasticml/r/gen": b"g1", "/elasticml/r/g10/keep": b"x"}
    everything = etcd_v3.post("kv/range", {"key": "AA==", "range_end": "AA=="})
    assert all(base64.b64decode(item["key"]).startswith(b"/elasticml-v3/")
               for item in everything["kvs"]), "every key under the prefix"


def test_deletes_of_many_keys_go_in_several_transactions(etcd_v3):
    kv = _kv(etcd_v3.endpoint)
    keys = [f"/elasticml/r/g0/beat/{i}" for i in range(150)]
    for key in keys:
        kv.set(key, b"1")
    kv.delete(keys)
    assert kv.contents() == {}


def test_a_member_that_does_not_answer_is_passed_over(etcd_v3):
    dead = f"127.0.0.1:{free_port()}"
    kv = _kv(f"{dead},{etcd_v3.endpoint}")
    kv.set("/elasticml/x", b"1")
    assert kv.get("/elasticml/x") == b"1"
    with pytest.raises(StoreUnreachable, match="no etcd member answered"):
        _kv(dead).get("/elasticml/x")
    etcd_v3.stop()
    with pytest.raises(StoreUnreachable):
        kv.get("/elasticml/x")


@pytest.fixture
def with_users(etcd_v3):
    """Users on: root, and `eml` (password `s3cret-pw`) that may use /elasticml-v3/ only."""
    b64 = base64.b64encode
    for path, body in [
            ("auth/user/add", {"name": "root", "password": "root-pw"}),
            ("auth/user/grant", {"user": "root", "role": "root"}),
            ("auth/user/add", {"name": "eml", "password": "s3cret-pw"}),
            ("auth/user/add", {"name": "reader", "password": "reader-pw"}),
            ("auth/role/add", {"name": "jobs"}),
            ("auth/role/grant", {"name": "jobs", "perm": {
                "permType": "READWRITE", "key": b64(b"/elasticml-v3/").decode(),
                "range_end": b64(b"/elasticml-v30").decode()}}),
            ("auth/user/grant", {"user": "eml", "role": "jobs"}),
            ("auth/role/add", {"name": "readers"}),
            ("auth/role/grant", {"name": "readers", "perm": {
                "permType": "READ", "key": b64(b"/elasticml-v3/").decode(),
                "range_end": b64(b"/elasticml-v30").decode()}}),
            ("auth/user/grant", {"user": "reader", "role": "readers"}),
            ("auth/enable", {})]:
        etcd_v3.post(path, body)
    return etcd_v3


def _access(endpoint, password=None, **conf):
    env = {"ELASTICML_ETCD_PASSWORD": password} if password else {}
    return access_from_conf(endpoint, conf.get, environ=env)


def test_a_user_for_an_etcd_without_users_is_named(etcd_v3):
    with pytest.raises(EtcdAccessError, match="has authentication off, so user 'eml' cannot "
                                              "log in"):
        check_access(_access(etcd_v3.endpoint, "pw", user="eml"))


def test_a_user_logs_in_and_a_renewed_token_is_used(with_users):
    kv = EtcdV3KV(_access(with_users.endpoint, "s3cret-pw", user="eml"))
    kv.set("/elasticml/x", b"1")
    kv._session.headers["Authorization"] = "stale.1"  # a token the server does not know
    assert kv.get("/elasticml/x") == b"1"


@pytest.mark.parametrize(("password", "conf", "says"), [
    ("wrong-pw", {"user": "eml"}, "refused user 'eml': wrong password or no such user (the "
                                  "password is from $ELASTICML_ETCD_PASSWORD)"),
    (None, {}, "requires a user: set elastic.rdzv.user"),
    ("reader-pw", {"user": "reader"}, "may not read and write /elasticml-v3/: grant its role "
                                      "readwrite"),
])
def test_what_etcd_refuses_is_named_in_one_line(with_users, password, conf, says):
    access = _access(with_users.endpoint, password, **conf)
    with pytest.raises(EtcdAccessError) as refused:
        check_access(access)
    message = str(refused.value)
    assert says in message and "\n" not in message
    assert "wrong-pw" not in message and "reader-pw" not in message, "never the password"
    with pytest.raises(EtcdRefused):
        EtcdV3KV(access).set("/elasticml/x", b"1")


def test_the_password_file_is_read_when_the_environment_has_none(with_users, tmp_path):
    secret = tmp_path / "etcd-password"
    secret.write_text("s3cret-pw\n")
    check_access(_access(with_users.endpoint, user="eml", password_file=str(secret)))
    secret.write_text("not-it\n")
    with pytest.raises(EtcdAccessError, match=f"password is from elastic.rdzv.password_file "
                                              f"\\({secret}\\)"):
        check_access(_access(with_users.endpoint, user="eml", password_file=str(secret)))


def _params(endpoint, **conf):
    return RendezvousParameters(
        backend="elasticml-etcd", endpoint=endpoint, run_id="job", min_nodes=2, max_nodes=2,
        local_addr="127.0.0.1", last_call_timeout="0.2", regroup_wait="0.2",
        node_timeout="1.5", training_hash="h", nproc_per_node="1", **conf)


def test_two_handlers_form_a_round_and_pass_torchs_exit_barrier(etcd_v3, monkeypatch):
    monkeypatch.setenv("ELASTICML_JOB_KEY", KEY)
    handlers = [create_handler(_params(etcd_v3.endpoint)) for _ in range(2)]
    infos: list = [None, None]

    def join(i):
        infos[i] = handlers[i].next_rendezvous()

    threads = [threading.Thread(target=join, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(info.rank for info in infos) == [0, 1]
    assert {info.world_size for info in infos} == {2}
    waits = [threading.Thread(target=barrier, args=(info.store, 2, "torchelastic/agent/"
                                                    "terminal_state", 30)) for info in infos]
    for wait in waits:
        wait.start()
    for wait in waits:
        wait.join(60)
    assert not any(wait.is_alive() for wait in waits)
    for handler in handlers:
        handler.shutdown()
    kept = _kv(etcd_v3.endpoint).contents()
    assert kept["/elasticml/job/g0/closed"][:1] == b"1", "the job is closed"
    assert any("terminal_state" in key for key in kept), "the barrier's keys are in etcd"


def test_a_handler_with_a_wrong_password_is_refused_in_one_line(with_users, monkeypatch):
    monkeypatch.setenv("ELASTICML_JOB_KEY", KEY)
    monkeypatch.setenv("ELASTICML_ETCD_PASSWORD", "wrong-pw")
    with pytest.raises(RendezvousError, match="refused user 'eml': wrong password"):
        create_handler(_params(with_users.endpoint, user="eml"))


def test_the_store_for_torch_over_etcd(etcd_v3):
    store = KVStore(_kv(etcd_v3.endpoint), timeout=5)
    prefixed = PrefixStore("/elasticml/job/g0/r0/", store)
    assert prefixed.add("n", 2) == 2 and prefixed.add("n", 3) == 5
    prefixed.set("k", "v")
    assert prefixed.get("k") == b"v" and prefixed.check(["k"])
    assert prefixed.compare_set("c", "", "first") == b"first"
    assert prefixed.compare_set("c", "other", "x") == b"first"


def test_etcd_v2_with_tls_still_serves_existing_setups(etcd_binary, tmp_path, monkeypatch):
    monkeypatch.setenv("ELASTICML_JOB_KEY", KEY)
    ca = Authority(tmp_path / "pki", "v2")
    client = ca.client("node")
    server = EtcdServer(etcd_binary, tmp_path / "etcd", v2=True, tls=ca)
    try:
        conf = {"ca_cert": str(ca.cert), "ssl_cert": str(client.cert),
                "ssl_cert_key": str(client.key)}
        params = _params(server.endpoint, **conf)
        params.backend, params.min_nodes, params.max_nodes = "elasticml-etcd-v2", 1, 1
        handler = create_handler(params)
        assert handler.next_rendezvous().world_size == 1
        handler.shutdown()
        stranger = Authority(tmp_path / "other", "other")
        params = _params(server.endpoint, **{**conf, "ca_cert": str(stranger.cert)})
        params.backend = "elasticml-etcd-v2"
        with pytest.raises(RendezvousError, match="certificate is not signed by the CA"):
            create_handler(params)
    finally:
        server.stop()
