"""`elasticml export slurm`: an sbatch script that runs a recipe elastically on an allocation.

What the script does, and why:
* `--nodes=MIN-MAX` from `elastic.nnodes`: Slurm allocates as many nodes as it can without
  delaying the start (an sbatch `--ntasks-per-node` would make it settle for MIN). `srun`
  then starts one task per allocated node; each runs `elasticml train` on the resolved
  recipe, which the script carries inside itself and copies to every node with `sbcast` (no
  shared filesystem needed).
* The rendezvous endpoint, unless the recipe names one, is the head node of the allocation
  (its `NodeAddr`, the address Slurm itself reaches it at) on port 29400 + job id % 1000, so
  two jobs whose allocations share a head node do not collide. The head node's agent hosts
  the rendezvous store: losing that node loses the store (name a standalone store or etcd
  endpoint to survive it); losing any other node is survived.
* `sbatch --no-kill` and `srun --no-kill --kill-on-bad-exit=0 --wait=0`: Slurm otherwise
  cancels the whole job when one node fails, or ends the other tasks when one exits, while
  the survivors are still training.
* `--requeue`: a preempted job goes back to the queue and, when it runs again, resumes from
  the newest checkpoint in its run dir (`--open-mode=append` keeps the earlier output).
* A fresh job key per job (`ELASTICML_JOB_KEY`, unless the submitter's environment already
  has one), exported to the tasks by `srun` and never written to a file.
* With `trainer.encrypt_checkpoints` and no `trainer.checkpoint_key_file`, the checkpoint key
  must come from the submitter's environment (`ELASTICML_CHECKPOINT_KEY`, exported to the
  tasks the same way): the script stops before anything starts without it. It is never made
  up per job, since a requeued job must read the checkpoints of the one before.
* Node-local resources: `--exclusive` (the workers share the node's cores, as on a machine of
  their own) unless `trainer.threads` fixes the threads per worker, and one GPU per worker
  when `trainer.device` is cuda.
"""

from __future__ import annotations

import shlex
import sys

from elasticml.errors import UserError
from elasticml.export.launch import (
    DEFAULT_RDZV_PORT,
    ExportRequest,
    SchedulerLaunch,
    compile_for_scheduler,
)
from elasticml.recipe.schema import Recipe

HEAD_NODE = "slurm-head-node"
"""Plans the launch until the job runs; the script replaces it by the head node's address."""
RECIPE_END = "ELASTICML_RECIPE"
"""Ends the script's here-document copy of the recipe; a recipe line equal to it is refused."""


def export_slurm(request: ExportRequest, python: str | None = None) -> str:
    launch = compile_for_scheduler(request, "Slurm", lambda _: f"{HEAD_NODE}:{DEFAULT_RDZV_PORT}")
    return sbatch_script(launch, python or sys.executable)


def sbatch_script(launch: SchedulerLaunch, python: str) -> str:
    plan, recipe = launch.plan, launch.recipe
    recipe_yaml = launch.recipe_yaml(with_endpoint=False)
    if any(line == RECIPE_END for line in recipe_yaml.splitlines()):
        raise UserError(f"the resolved recipe contains a line '{RECIPE_END}', which ends the "
                        "script's copy of it; change that value")
    endpoint = (plan.rdzv_endpoint if launch.endpoint_given
                else f"<head node address>:<{DEFAULT_RDZV_PORT} + job id % 1000>")
    conf = ",".join(f"{k}={v}" for k, v in plan.rdzv_configs.items())
    lines = [
        "#!/bin/bash",
        f"# Elastic training of run '{plan.run_id}' on Slurm (exported by `elasticml export "
        "slurm`).",
        "# Submit with `sbatch FILE`; sbatch options on the command line win over the ones",
        "# below. One task per node runs `elasticml train` on the recipe at the end of this",
        "# script. Rendezvous, as `elasticml train --dry-run` prints it:",
        f"#   backend {plan.rdzv_backend}, endpoint {endpoint}, id {plan.run_id},",
        f"#   nodes {plan.nnodes}, {plan.nproc_per_node} worker(s) per node, "
        f"max restarts {plan.max_restarts},",
        f"#   conf {conf}",
        f"#SBATCH --job-name={plan.run_id}",
        f"#SBATCH --nodes={plan.nnodes.replace(':', '-')}",
        *_node_resources(recipe, plan.nproc_per_node),
        "#SBATCH --no-kill",
        "#SBATCH --requeue",
        "#SBATCH --open-mode=append",
        "#SBATCH --output=%x-%j.out",
        "set -euo pipefail",
        "",
        f"python={shlex.quote(python)}",
        "if [ -z \"${ELASTICML_JOB_KEY:-}\" ]; then  # one key per job, in no file",
        "  ELASTICML_JOB_KEY=$(\"$python\" -c 'import secrets; print(secrets.token_hex(32))')",
        "fi",
        "export ELASTICML_JOB_KEY",
        *_checkpoint_key_lines(recipe),
        "",
        *_endpoint_lines(launch),
        "",
        "recipe=\"/tmp/elasticml-${SLURM_JOB_ID}.yaml\"",
        "staged=$(mktemp)",
        f"cat > \"$staged\" <<'{RECIPE_END}'",
        recipe_yaml.rstrip("\n"),
        RECIPE_END,
        "sbcast --force \"$staged\" \"$recipe\"",
        "rm -f \"$staged\"",
        "",
        "exec srun --nodes=\"$SLURM_JOB_NUM_NODES\" --ntasks=\"$SLURM_JOB_NUM_NODES\" "
        "--ntasks-per-node=1 \\",
        "  --no-kill --kill-on-bad-exit=0 --wait=0 --label \\",
        "  \"$python\" -m elasticml train \"$recipe\" --rdzv-endpoint \"$rdzv_endpoint\"",
    ]
    return "\n".join(lines) + "\n"


def _checkpoint_key_lines(recipe: Recipe) -> list[str]:
    if not recipe.trainer.encrypt_checkpoints or recipe.trainer.checkpoint_key_file:
        return []
    return [
        "if [ -z \"${ELASTICML_CHECKPOINT_KEY:-}\" ]; then  # the same for every job of the run",
        "  echo 'error: trainer.encrypt_checkpoints is on: submit with ELASTICML_CHECKPOINT_KEY "
        "set (or name trainer.checkpoint_key_file)' >&2",
        "  exit 2",
        "fi",
        "export ELASTICML_CHECKPOINT_KEY",
    ]


def _node_resources(recipe: Recipe, nproc: int) -> list[str]:
    lines = []
    if recipe.trainer.threads:
        lines.append(f"#SBATCH --cpus-per-task={nproc * recipe.trainer.threads}")
    else:
        lines.append("#SBATCH --exclusive")
    if recipe.trainer.device == "cuda":
        lines.append(f"#SBATCH --gpus-per-node={nproc}")
    return lines


def _endpoint_lines(launch: SchedulerLaunch) -> list[str]:
    if launch.endpoint_given:
        return [f"rdzv_endpoint={shlex.quote(launch.plan.rdzv_endpoint)}"]
    return [
        "# The rendezvous: on the allocation's head node, at the address Slurm reaches it at.",
        "mapfile -t nodes < <(scontrol show hostnames \"$SLURM_JOB_NODELIST\")",
        "head_addr=$(scontrol show node -o \"${nodes[0]}\" | "
        "sed -n 's/.*NodeAddr=\\([^ ]*\\).*/\\1/p')",
        f"rdzv_endpoint=\"${{head_addr:-${{nodes[0]}}}}:$(({DEFAULT_RDZV_PORT} + "
        "SLURM_JOB_ID % 1000))\"",
    ]
