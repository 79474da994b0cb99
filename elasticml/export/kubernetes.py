"""`elasticml export kubernetes`: a Kubeflow Training Operator v1 `PyTorchJob` and a ConfigMap.

Kubeflow Trainer v2 has no elastic policy yet; the v1 `PyTorchJob` with `elasticPolicy` is
the elastic route. What the manifests say, and why:
* `elasticPolicy` carries the launch as `elasticml train --dry-run` prints it:
  `minReplicas`/`maxReplicas` from `elastic.nnodes`, `rdzvBackend`, `rdzvHost`/`rdzvPort`,
  `rdzvId` (the run id), `rdzvConf`, `maxRestarts`; `spec.nprocPerNode` is the workers per
  pod (`elasticPolicy.nProcPerNode` is deprecated in favour of it). The operator sizes the
  job (and its HPA, when `metrics` are given) from it.
* Every `Worker` pod runs `elasticml train` on the resolved recipe from the ConfigMap, which
  names the same rendezvous, so the pods run exactly that launch. Unless the recipe names an
  endpoint, the rendezvous is on the first worker (`<name>-worker-0`, the pod's host name and
  its headless Service); its loss ends the job, the loss of any other pod does not.
* `restartPolicy: ExitCode`: a pod stopped by a signal (exit 128+, e.g. evicted) is
  recreated and rejoins; a bad recipe (exit 2) or a failed job (exit 1) is not retried.
* The job key comes from the Secret `<name>-job-key` (`secretKeyRef`); it is never in these
  files. With `trainer.encrypt_checkpoints` (and no `trainer.checkpoint_key_file`), so does
  the checkpoint key, from the Secret `<name>-checkpoint-key`. The working directory is an
  `emptyDir`, so a restarted container finds its checkpoints; a pod that is recreated gets
  the training state from its peers.
"""

from __future__ import annotations

import re

import yaml

from elasticml.errors import UserError
from elasticml.export.launch import (
    DEFAULT_RDZV_PORT,
    ExportRequest,
    SchedulerLaunch,
    compile_for_scheduler,
)
from elasticml.jobkey import ENV as JOB_KEY_ENV
from elasticml.recipe.schema import Recipe
from elasticml.train.encryption import ENV as CHECKPOINT_KEY_ENV

RECIPE_DIR = "/etc/elasticml"
WORK_DIR = "/var/lib/elasticml"
CONTAINER = "pytorch"
"""The Training Operator finds the training container by this name."""
_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_CPU = re.compile(r"^(\d+(\.\d+)?|\d+m)$")
MAX_NAME = 50
"""Pod names are `<name>-worker-<index>`, and Kubernetes names stop at 63 characters."""


def job_name(recipe: Recipe) -> str:
    """The Kubernetes name of a run: its id in lower case with '_' and '.' as '-'."""
    name = re.sub(r"[_.]", "-", recipe.run_id.lower())
    if not _NAME.match(name) or len(name) > MAX_NAME:
        raise UserError(f"run id '{recipe.run_id}' cannot name a Kubernetes job ('{name}'); "
                        "give --run-id with letters, digits and '-', starting with a letter, "
                        f"at most {MAX_NAME} characters")
    return name


def export_kubernetes(request: ExportRequest, image: str | None, cpu: str | None = None,
                      hpa_cpu_utilization: int | None = None) -> str:
    if not image:
        raise UserError("a Kubernetes export needs --image IMAGE: a container image with "
                        "elasticml (and your own code and data) installed")
    if cpu and not _CPU.match(cpu):
        raise UserError(f"--cpu {cpu}: not a CPU quantity; give cores (4, 0.5) or millicores "
                        "(500m)")
    if hpa_cpu_utilization is not None:
        if not 1 <= hpa_cpu_utilization <= 100:
            raise UserError(f"--hpa-cpu-utilization {hpa_cpu_utilization}: give a percentage "
                            "between 1 and 100")
        if not cpu:
            raise UserError("--hpa-cpu-utilization needs --cpu: the autoscaler measures "
                            "utilization against each pod's CPU request")
    launch = compile_for_scheduler(
        request, "Kubernetes", lambda recipe: f"{job_name(recipe)}-worker-0:{DEFAULT_RDZV_PORT}")
    return manifests(launch, image, cpu, hpa_cpu_utilization)


def manifests(launch: SchedulerLaunch, image: str, cpu: str | None = None,
              hpa_cpu_utilization: int | None = None) -> str:
    name = job_name(launch.recipe)
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"{name}-recipe"},
        "data": {"recipe.yaml": launch.recipe_yaml()},
    }
    documents = [config_map, pytorch_job(launch, name, image, cpu, hpa_cpu_utilization)]
    header = [
        f"# Elastic training of run '{launch.plan.run_id}' with Kubeflow's Training Operator "
        "(v1 PyTorchJob).",
        "# Give the job its key once (it is never in this file), then apply:",
        f"#   kubectl create secret generic {name}-job-key \\",
        "#     --from-literal=key=\"$(python3 -c 'import secrets; print(secrets.token_hex(32))')\"",
        "#   kubectl apply -f FILE",
    ]
    body = yaml.dump_all(documents, Dumper=_Dumper, sort_keys=False, default_flow_style=False)
    return "\n".join(header) + "\n" + body


def pytorch_job(launch: SchedulerLaunch, name: str, image: str, cpu: str | None,
                hpa_cpu_utilization: int | None) -> dict:
    plan = launch.plan
    elastic = {
        "minReplicas": plan.min_nodes,
        "maxReplicas": plan.max_nodes,
        "rdzvBackend": plan.rdzv_backend,
        "rdzvHost": launch.rdzv_host,
        "rdzvPort": launch.rdzv_port,
        "rdzvId": plan.run_id,
        "rdzvConf": [{"key": k, "value": str(v)} for k, v in plan.rdzv_configs.items()],
        "maxRestarts": plan.max_restarts,
    }
    if hpa_cpu_utilization is not None:
        elastic["metrics"] = [{"type": "Resource", "resource": {
            "name": "cpu",
            "target": {"type": "Utilization", "averageUtilization": hpa_cpu_utilization}}}]
    container = {
        "name": CONTAINER,
        "image": image,
        "command": ["elasticml", "train", f"{RECIPE_DIR}/recipe.yaml"],
        "workingDir": WORK_DIR,
        "env": [{"name": JOB_KEY_ENV, "valueFrom": {
            "secretKeyRef": {"name": f"{name}-job-key", "key": "key"}}}, *_checkpoint_key(
                launch.recipe, name)],
        "volumeMounts": [{"name": "recipe", "mountPath": RECIPE_DIR, "readOnly": True},
                         {"name": "work", "mountPath": WORK_DIR}],
    }
    if cpu:
        container["resources"] = {"requests": {"cpu": cpu}}
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": name},
        "spec": {
            "nprocPerNode": str(plan.nproc_per_node),
            "elasticPolicy": elastic,
            "pytorchReplicaSpecs": {"Worker": {
                "replicas": plan.max_nodes,
                "restartPolicy": "ExitCode",
                "template": {"spec": {
                    "containers": [container],
                    "volumes": [{"name": "recipe", "configMap": {"name": f"{name}-recipe"}},
                                {"name": "work", "emptyDir": {}}],
                }},
            }},
        },
    }


def _checkpoint_key(recipe: Recipe, name: str) -> list[dict]:
    if not recipe.trainer.encrypt_checkpoints or recipe.trainer.checkpoint_key_file:
        return []
    return [{"name": CHECKPOINT_KEY_ENV, "valueFrom": {
        "secretKeyRef": {"name": f"{name}-checkpoint-key", "key": "key"}}}]


class _Dumper(yaml.SafeDumper):
    """Safe YAML with multi-line strings (the recipe) as readable `|` blocks."""


def _string(dumper: yaml.SafeDumper, value: str):
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _string)
