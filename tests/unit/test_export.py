"""`elasticml export`: the Slurm script and the Kubernetes manifests run exactly the launch
`elasticml train --dry-run` prints, the manifests are valid PyTorchJobs, and bad input is one
line with exit status 2."""

from __future__ import annotations

import os
import random
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from elasticml.cli import app
from tests.integration.cluster import TINY, env_with_repo

runner = CliRunner()
FLAGS = ("--nnodes", "1:3", "--nproc-per-node", "2", "--run-id", "exp_7", "--max-restarts", "4",
         "elastic.rdzv.last_call=1.5", "trainer.max_steps=12")
WORKER = " -m elasticml.train.worker"


def invoke(*args: str) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def dry_run(recipe: Path, *args: str) -> str:
    """`train --dry-run`: the resolved recipe, batch plans and torchrun line up to the worker's
    own arguments (the recipe file's path, which differs by design)."""
    return invoke("train", recipe, *args, "--dry-run").split(WORKER)[0]


def torchrun_args(text: str) -> dict[str, str]:
    line = text.strip().splitlines()[-1]
    return dict(re.findall(r"--([\w-]+)=(\S+)", line))


# --- Slurm -----------------------------------------------------------------------------------

FAKE_SLURM = {
    # The allocation: two nodes, the head node at 10.9.8.7.
    "scontrol": """#!/bin/sh
case "$1 $2" in
  "show hostnames") printf 'gpu-a\\ngpu-b\\n' ;;
  "show node") echo "NodeName=$4 Arch=x86_64 NodeAddr=10.9.8.7 NodeHostName=$4 State=ALLOCATED" ;;
esac
""",
    "sbcast": """#!/bin/sh
cp "$2" "$3.$$" && mv "$3.$$" "$3"
""",
    # One task: what srun would start on a node, with --dry-run added.
    "srun": """#!/bin/sh
echo "$@" > "$FAKE_SLURM_LOG"
printf '%s' "$ELASTICML_JOB_KEY" > "$FAKE_SLURM_LOG.key"
while [ "${1#--}" != "$1" ]; do shift; done
exec "$@" --dry-run
""",
}


JOB_ID = random.randrange(10**6, 10**7)
"""A fake job's id; the script copies the recipe to /tmp/elasticml-<id>.yaml."""


@pytest.fixture(autouse=True)
def _remove_recipe_copy():
    yield
    Path(f"/tmp/elasticml-{JOB_ID}.yaml").unlink(missing_ok=True)


def run_sbatch_script(script: Path, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """The script under bash on a fake two-node allocation."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in FAKE_SLURM.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(stat.S_IRWXU)
    environ = env_with_repo(PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_ID=str(JOB_ID),
                            SLURM_JOB_NODELIST="gpu-[a-b]", SLURM_JOB_NUM_NODES="2",
                            FAKE_SLURM_LOG=str(tmp_path / "srun.log"), **env)
    environ.pop("ELASTICML_JOB_KEY", None)
    environ.update(env)
    return subprocess.run(["bash", str(script)], capture_output=True, text=True, env=environ,
                          cwd=tmp_path)


def test_sbatch_script_runs_on_every_node_what_dry_run_prints(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    script = tmp_path / "job.sbatch"
    invoke("export", "slurm", TINY, *FLAGS, "-o", script)
    text = script.read_text()
    for line in ("#SBATCH --nodes=1-3", "#SBATCH --no-kill", "#SBATCH --requeue",
                 "#SBATCH --job-name=exp_7"):
        assert line in text.splitlines()

    done = run_sbatch_script(script, tmp_path)
    assert done.returncode == 0, done.stderr
    srun = (tmp_path / "srun.log").read_text().split()
    assert {"--no-kill", "--kill-on-bad-exit=0", "--ntasks-per-node=1", "--ntasks=2"} <= set(srun)
    endpoint = f"10.9.8.7:{29400 + JOB_ID % 1000}"  # the head node's address
    assert srun[-2:] == ["--rdzv-endpoint", endpoint]
    expected = dry_run(TINY, *FLAGS, "--rdzv-endpoint", endpoint)
    assert done.stdout.split(WORKER)[0] == expected
    assert not list(tmp_path.glob("tmp*")), "the staged recipe is removed"


def test_sbatch_script_makes_a_fresh_job_key_per_job_and_writes_it_nowhere(tmp_path):
    script = tmp_path / "job.sbatch"
    invoke("export", "slurm", TINY, *FLAGS, "-o", script)
    keys = []
    for _ in range(2):
        assert run_sbatch_script(script, tmp_path).returncode == 0
        keys.append((tmp_path / "srun.log.key").read_text())
    assert all(re.fullmatch(r"[0-9a-f]{64}", key) for key in keys) and keys[0] != keys[1]
    assert keys[1] not in script.read_text() + (tmp_path / "srun.log").read_text()

    given = "k" * 40
    assert run_sbatch_script(script, tmp_path, ELASTICML_JOB_KEY=given).returncode == 0
    assert (tmp_path / "srun.log.key").read_text() == given


def test_sbatch_script_keeps_an_endpoint_the_recipe_names(tmp_path):
    script = tmp_path / "job.sbatch"
    invoke("export", "slurm", TINY, *FLAGS, "--rdzv-endpoint", "store.example:29500",
           "elastic.rdzv.standalone_store=true", "-o", script)
    assert run_sbatch_script(script, tmp_path).returncode == 0
    assert (tmp_path / "srun.log").read_text().split()[-2:] == ["--rdzv-endpoint",
                                                                "store.example:29500"]


def test_sbatch_script_asks_for_the_nodes_resources(tmp_path):
    text = invoke("export", "slurm", TINY, "--nproc-per-node", "2", "trainer.threads=3")
    assert "#SBATCH --cpus-per-task=6" in text and "--exclusive" not in text
    text = invoke("export", "slurm", TINY, "trainer.threads=null", "trainer.device=cuda")
    assert "#SBATCH --exclusive" in text and "#SBATCH --gpus-per-node=2" in text


# --- Kubernetes ------------------------------------------------------------------------------


def k8s_documents(*args: str) -> dict[str, dict]:
    text = invoke("export", "kubernetes", TINY, "--image", "registry.example/eml:1", *args)
    return {doc["kind"]: doc for doc in yaml.safe_load_all(text)}


def test_pytorchjob_carries_what_dry_run_prints(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    docs = k8s_documents(*FLAGS)
    job, recipe = docs["PyTorchJob"], docs["ConfigMap"]["data"]["recipe.yaml"]
    assert job["metadata"]["name"] == "exp-7"
    expected = dry_run(TINY, *FLAGS, "--rdzv-endpoint", "exp-7-worker-0:29400")
    (tmp_path / "mounted.yaml").write_text(recipe)
    assert dry_run(tmp_path / "mounted.yaml") == expected  # what every pod runs

    torchrun = torchrun_args(expected)
    policy = job["spec"]["elasticPolicy"]
    assert f"{policy['minReplicas']}:{policy['maxReplicas']}" == torchrun["nnodes"]
    assert job["spec"]["nprocPerNode"] == torchrun["nproc-per-node"]
    assert policy["rdzvBackend"] == torchrun["rdzv-backend"]
    assert f"{policy['rdzvHost']}:{policy['rdzvPort']}" == torchrun["rdzv-endpoint"]
    assert policy["rdzvId"] == torchrun["rdzv-id"]
    assert ",".join(f"{c['key']}={c['value']}" for c in policy["rdzvConf"]) == \
        torchrun["rdzv-conf"]
    assert str(policy["maxRestarts"]) == torchrun["max-restarts"]

    [container] = job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"]
    assert container["command"] == ["elasticml", "train", "/etc/elasticml/recipe.yaml"]
    assert container["env"] == [{"name": "ELASTICML_JOB_KEY", "valueFrom": {
        "secretKeyRef": {"name": "exp-7-job-key", "key": "key"}}}]


def test_exports_never_contain_the_job_key(tmp_path, monkeypatch):
    key = "s3cr3t" * 8
    monkeypatch.setenv("ELASTICML_JOB_KEY", key)
    slurm = invoke("export", "slurm", TINY, *FLAGS)
    kubernetes = invoke("export", "kubernetes", TINY, "--image", "eml", *FLAGS)
    assert key not in slurm and key not in kubernetes


CRD = Path(__file__).resolve().parents[1] / "schemas" / "kubeflow.org_pytorchjobs.yaml"


def strict(schema):
    """Kubernetes prunes or (with `kubectl apply --validate=strict`) rejects fields a
    structural schema does not declare; JSON Schema allows them unless told otherwise."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    schema = {key: strict(value) for key, value in schema.items()}
    if ("properties" in schema and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        schema["additionalProperties"] = False
    return schema


@pytest.fixture(scope="module")
def pytorchjob_validator():
    jsonschema = pytest.importorskip("jsonschema")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load(CRD.read_text(), Loader=loader)
    [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = strict(version["schema"]["openAPIV3Schema"])
    return jsonschema.Draft202012Validator(schema)


def test_pytorchjob_is_valid_against_the_training_operators_crd(pytorchjob_validator):
    for extra in ((), ("--cpu", "4", "--hpa-cpu-utilization", "80")):
        job = k8s_documents(*FLAGS, *extra)["PyTorchJob"]
        errors = [e.message for e in pytorchjob_validator.iter_errors(job)]
        assert errors == []
    assert job["spec"]["elasticPolicy"]["metrics"][0]["resource"]["target"] == {
        "type": "Utilization", "averageUtilization": 80}


def test_the_crd_check_has_teeth(pytorchjob_validator):
    job = k8s_documents()["PyTorchJob"]
    job["spec"]["elasticPolicy"]["rdzvHots"] = "typo"
    job["spec"]["elasticPolicy"]["rdzvPort"] = "29400"
    messages = " ".join(e.message for e in pytorchjob_validator.iter_errors(job))
    assert "rdzvHots" in messages and "'29400' is not of type 'integer'" in messages


def test_recipe_config_map_is_the_resolved_recipe():
    docs = k8s_documents("trainer.max_steps=7")
    config_map = docs["ConfigMap"]
    assert config_map["metadata"]["name"] == "tiny-recipe"
    assert yaml.safe_load(config_map["data"]["recipe.yaml"])["trainer"]["max_steps"] == 7
    volumes = docs["PyTorchJob"]["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"][
        "volumes"]
    assert {"name": "recipe", "configMap": {"name": "tiny-recipe"}} in volumes


# --- bad input -------------------------------------------------------------------------------


def elasticml(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "elasticml", *map(str, args)],
                          capture_output=True, text=True, env=env_with_repo(), cwd=cwd)


@pytest.mark.parametrize(("args", "expected"), [
    (("slurm", TINY, "--nnodes", "1:2", "--rdzv-endpoint", "127.0.0.1:29400"),
     "elastic.rdzv.endpoint: '127.0.0.1:29400' is a loopback address"),
    (("kubernetes", TINY, "--image", "eml", "--rdzv-endpoint", "localhost:29400"),
     "is a loopback address the other nodes of a Kubernetes job cannot reach"),
    (("slurm", TINY, "--rdzv-endpoint", "10.0.0.1:0"), "has port 0"),
    (("slurm", TINY, "--nnodes", "3:2"), "elastic.nnodes: '3:2': MIN is larger than MAX"),
    (("slurm", TINY, "elastic.local_addr=10.0.0.5"), "elastic.local_addr: '10.0.0.5' names one"),
    (("kubernetes", TINY), "needs --image IMAGE"),
    (("kubernetes", TINY, "--image", "eml", "--run-id", "7up"), "cannot name a Kubernetes job"),
    (("kubernetes", TINY, "--image", "eml", "--hpa-cpu-utilization", "80"), "needs --cpu"),
    (("kubernetes", TINY, "--image", "eml", "--cpu", "four"), "--cpu four"),
    (("slurm", TINY, "-o", "/nonexistent/dir/job.sbatch"), "-o /nonexistent/dir/job.sbatch: "
                                                           "cannot write"),
])
def test_bad_input_is_one_line_exit_2(args, expected, tmp_path):
    result = elasticml("export", *args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stdout == ""


def test_a_failed_export_leaves_an_existing_file_alone(tmp_path):
    target = tmp_path / "job.sbatch"
    target.write_text("keep me\n")
    result = elasticml("export", "slurm", TINY, "trainer.bogus=1", "-o", target)
    assert result.returncode == 2 and target.read_text() == "keep me\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.sbatch"]


def test_export_imports_neither_torch_nor_the_agent(tmp_path):
    code = ("import sys\nfrom elasticml.cli import main\n"
            f"sys.argv = ['elasticml', 'export', 'kubernetes', {str(TINY)!r}, '--image', 'eml',"
            f" '-o', {str(tmp_path / 'job.yaml')!r}]\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "sys.argv[2] = 'slurm'; sys.argv[4:6] = []\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "loaded = {'torch', 'elasticml.launch.agent'} & set(sys.modules)\n"
            "assert not loaded, loaded\n")
    subprocess.run([sys.executable, "-c", code], check=True, env=env_with_repo())
    assert (tmp_path / "job.yaml").read_text().startswith("#!/bin/bash")


def test_encrypted_checkpoints_take_their_key_from_the_environment_or_a_secret(tmp_path,
                                                                               monkeypatch):
    key = "c2VjcmV0IGNoZWNrcG9pbnQga2V5IG9mIDMyIGJ5dGVzISE="
    monkeypatch.setenv("ELASTICML_CHECKPOINT_KEY", key)
    script = tmp_path / "job.sbatch"
    invoke("export", "slurm", TINY, *FLAGS, "trainer.encrypt_checkpoints=true", "-o", script)
    environ_without = {"ELASTICML_CHECKPOINT_KEY": ""}
    refused = run_sbatch_script(script, tmp_path, **environ_without)
    assert refused.returncode == 2 and "ELASTICML_CHECKPOINT_KEY" in refused.stderr
    assert not (tmp_path / "srun.log").exists(), "nothing started"
    assert run_sbatch_script(script, tmp_path, ELASTICML_CHECKPOINT_KEY=key).returncode == 0

    job = k8s_documents(*FLAGS, "trainer.encrypt_checkpoints=true")["PyTorchJob"]
    [container] = job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"]
    assert {"name": "ELASTICML_CHECKPOINT_KEY", "valueFrom": {"secretKeyRef": {
        "name": "exp-7-checkpoint-key", "key": "key"}}} in container["env"]
    assert key not in script.read_text() + yaml.safe_dump(job)
