"""The etcd settings of a launch: recipe fields, their checks, the plan, the environment, and
that the password never shows; the backend registered under its name."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from elasticml.cli import app
from elasticml.errors import UserError
from elasticml.launch.etcd_access import EtcdAccessError, access_from_conf, parse_endpoints
from elasticml.launch.plan import plan_launch
from elasticml.launch.rendezvous import BACKENDS, is_private
from elasticml.recipe.load import load_recipe
from tests.pki import Authority

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "recipes" / "digits.yaml"
ETCD = ["elastic.nnodes=1:2", "elastic.rdzv.backend=etcd",
        "elastic.rdzv.endpoint=10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:2379"]
PASSWORD = "pa55-word-never-shown"


def test_every_backend_is_registered_with_torch_under_its_own_name():
    entry_points = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "entry-points"]["torchrun.handlers"]
    assert sorted(entry_points) == sorted(BACKENDS)
    assert "elasticml-etcd" in BACKENDS


def test_backend_etcd_plans_elasticml_etcd_with_the_files_by_path(tmp_path):
    files = {name: tmp_path / f"{name}.pem" for name in ("ca", "cert", "key", "pw")}
    plan = plan_launch(load_recipe(DIGITS, overrides := ETCD + [
        f"elastic.rdzv.ca_cert={files['ca']}", f"elastic.rdzv.client_cert={files['cert']}",
        f"elastic.rdzv.client_key={files['key']}", "elastic.rdzv.user=trainer",
        f"elastic.rdzv.password_file={files['pw']}"]), DIGITS, overrides)
    assert plan.rdzv_backend == "elasticml-etcd"
    assert plan.rdzv_endpoint == "10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:2379"
    conf = plan.rdzv_configs
    assert (conf["ca_cert"], conf["ssl_cert"], conf["ssl_cert_key"], conf["password_file"]) == (
        str(files["ca"]), str(files["cert"]), str(files["key"]), str(files["pw"]))
    assert conf["user"] == "trainer"
    assert conf.items() <= plan.to_launch_config().rdzv_configs.items()
    assert "--rdzv-backend=elasticml-etcd " in plan.torchrun_command()


def test_etcd_v2_still_plans_elasticml_etcd_v2():
    overrides = ["elastic.nnodes=1:2", "elastic.rdzv.backend=etcd-v2",
                 "elastic.rdzv.endpoint=10.0.0.1:2379"]
    assert plan_launch(load_recipe(DIGITS, overrides), DIGITS, overrides).rdzv_backend == \
        "elasticml-etcd-v2"


@pytest.mark.parametrize(("overrides", "says"), [
    (["elastic.rdzv.backend=etcd"], "etcd needs the etcd members' HOST:PORT"),
    (["elastic.rdzv.endpoint=a:1,b:2"], "only backend etcd takes several endpoints"),
    (["elastic.rdzv.backend=etcd", "elastic.rdzv.endpoint=a:1,b"], "is not HOST:PORT (or "
                                                                    "several"),
    (["elastic.rdzv.ca_cert=/ca.pem"], "elastic.rdzv.ca_cert: only for an etcd backend"),
    (["elastic.rdzv.backend=etcd-v2", "elastic.rdzv.endpoint=a:1", "elastic.rdzv.user=u"],
     "etcd-v2 has no user here: use backend etcd"),
    (["elastic.rdzv.backend=etcd", "elastic.rdzv.endpoint=a:1",
      "elastic.rdzv.password_file=/pw"], "a password needs elastic.rdzv.user"),
    (["elastic.rdzv.backend=etcd", "elastic.rdzv.endpoint=a:1",
      "elastic.rdzv.client_cert=/c.pem"], "client_cert and client_key go together"),
])
def test_etcd_settings_that_cannot_work_are_named(overrides, says):
    with pytest.raises(UserError, match=says.replace("(", r"\(").replace(")", r"\)")):
        load_recipe(DIGITS, overrides)


def test_settings_the_recipe_leaves_out_come_from_the_environment():
    env = {"ELASTICML_ETCD_CA_CERT": "/env/ca.pem", "ELASTICML_ETCD_CLIENT_CERT": "/env/c.pem",
           "ELASTICML_ETCD_CLIENT_KEY": "/env/k.pem", "ELASTICML_ETCD_USER": "env-user"}
    access = access_from_conf("h1:2379,[::1]:2380,h3", {"ca_cert": "/conf/ca.pem"}.get, env)
    assert access.endpoints == (("h1", 2379), ("::1", 2380), ("h3", 2379))
    assert access.ca_cert == "/conf/ca.pem" and access.source("ca_cert") == \
        "elastic.rdzv.ca_cert"
    assert (access.client_cert, access.user) == ("/env/c.pem", "env-user")
    assert access.source("client_cert") == "$ELASTICML_ETCD_CLIENT_CERT"
    assert access.tls and access.scheme == "https"
    assert not access_from_conf("h:1", {}.get, {}).tls


def test_the_password_comes_from_the_environment_first_then_the_file(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("from-the-file\nignored\n")
    conf = {"user": "u", "password_file": str(secret)}.get
    assert access_from_conf("h:1", conf, {}).password() == "from-the-file"
    env = {"ELASTICML_ETCD_PASSWORD": "from-env"}
    assert access_from_conf("h:1", conf, env).password() == "from-env"
    with pytest.raises(EtcdAccessError, match="needs a password: set ELASTICML_ETCD_PASSWORD"):
        access_from_conf("h:1", {"user": "u"}.get, {}).password()
    with pytest.raises(EtcdAccessError, match="bad:port"):
        parse_endpoints("bad:port")


def test_unreadable_or_malformed_files_are_named_before_anything_connects(tmp_path):
    pki = Authority(tmp_path / "pki", "t")
    client = pki.client("node")
    good = {"ca_cert": str(pki.cert), "ssl_cert": str(client.cert),
            "ssl_cert_key": str(client.key)}
    assert access_from_conf("h:1", good.get, {}).problem_with_files() is None

    def problem(**changes):
        return access_from_conf("h:1", {**good, **changes}.get, {}).problem_with_files()

    missing = tmp_path / "missing.pem"
    assert problem(ca_cert=str(missing)) == (
        f"elastic.rdzv.ca_cert: cannot read {missing} (No such file or directory); give a "
        "readable PEM file")
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    assert "holds no PEM certificate" in problem(ca_cert=str(tmp_path / "junk.pem"))
    other = Authority(tmp_path / "other", "o").client("x")
    assert "do not load as a certificate and its unencrypted private key" in problem(
        ssl_cert_key=str(other.key))
    assert "cannot read" in problem(ssl_cert=str(missing))
    assert "needs a password" in problem(user="u")


def test_the_password_never_shows_in_a_dry_run(tmp_path, monkeypatch):
    monkeypatch.setenv("ELASTICML_ETCD_PASSWORD", PASSWORD)
    secret = tmp_path / "pw"
    secret.write_text(PASSWORD)
    shown = CliRunner().invoke(app, ["train", str(DIGITS), *ETCD, "elastic.rdzv.user=trainer",
                                     f"elastic.rdzv.password_file={secret}", "--dry-run"])
    assert shown.exit_code == 0, shown.output
    assert PASSWORD not in shown.output
    assert f"password_file={secret}" in shown.output, "the path is shown"
    assert "etcd password of user 'trainer' in ELASTICML_ETCD_PASSWORD (not shown)" in \
        shown.output


def test_an_unreadable_certificate_is_refused_before_launching(tmp_path, monkeypatch):
    monkeypatch.setenv("ELASTICML_JOB_KEY", "k" * 32)
    monkeypatch.chdir(tmp_path)
    refused = CliRunner().invoke(app, ["train", str(DIGITS), *ETCD,
                                       f"elastic.rdzv.ca_cert={tmp_path / 'nope.pem'}"])
    assert isinstance(refused.exception, UserError) and refused.exception.exit_code == 2
    assert str(refused.exception).startswith("elastic.rdzv.ca_cert: cannot read")
    assert not (tmp_path / "runs").exists(), "nothing written"


def test_a_list_of_loopback_members_is_private_and_any_other_is_not():
    assert is_private("127.0.0.1:2379,localhost:2380")
    assert not is_private("127.0.0.1:2379,10.0.0.2:2379")


def test_exports_carry_the_etcd_members_and_refuse_a_loopback_one():
    import yaml

    members = "10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:2379"
    made = CliRunner().invoke(app, ["export", "kubernetes", str(DIGITS), "--image", "eml",
                                    "--nnodes", "1:3", "--rdzv-backend", "etcd",
                                    "--rdzv-endpoint", members])
    assert made.exit_code == 0, made.output
    job = [doc for doc in yaml.safe_load_all(made.output) if doc["kind"] == "PyTorchJob"][0]
    policy = job["spec"]["elasticPolicy"]
    assert (policy["rdzvBackend"], policy["rdzvHost"], policy["rdzvPort"]) == (
        "elasticml-etcd", "10.0.0.1", 2379)
    refused = CliRunner().invoke(app, ["export", "slurm", str(DIGITS), "--nnodes", "1:3",
                                       "--rdzv-backend", "etcd", "--rdzv-endpoint",
                                       "10.0.0.1:2379,127.0.0.1:2379"])
    assert isinstance(refused.exception, UserError)
    assert "'127.0.0.1:2379' is a loopback address" in str(refused.exception)
