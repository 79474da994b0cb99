"""A recipe's launch made ready for a scheduler: the same `LaunchPlan` `elasticml train`
compiles, checked for what a scheduler needs, plus the resolved recipe the nodes will run.

A scheduler starts the same command on every node, so the launch must not name one node's
address (`elastic.local_addr`) nor a loopback rendezvous endpoint the other nodes cannot
reach. When the recipe names no endpoint, the scheduler supplies one: Slurm the head node of
the allocation (known only when the job runs), Kubernetes the first worker's pod. Every
other setting, the rendezvous included, comes from the `LaunchPlan` unchanged, so a
scheduler's nodes run exactly what `elasticml train --dry-run` prints.
"""

from __future__ import annotations

import copy
import ipaddress
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from elasticml.errors import UserError
from elasticml.launch.job import with_flags
from elasticml.launch.plan import LaunchPlan, plan_launch
from elasticml.recipe.load import find_recipe, load_recipe, recipe_to_yaml
from elasticml.recipe.schema import Recipe

DEFAULT_RDZV_PORT = 29400
"""torch's c10d port, used where the scheduler picks the rendezvous host."""


@dataclass(frozen=True)
class ExportRequest:
    recipe: str
    overrides: list[str]
    flags: dict[str, object]
    """`elasticml train`'s flags by name (`nnodes`, `rdzv_endpoint`, ...); None = not given."""


@dataclass(frozen=True)
class SchedulerLaunch:
    plan: LaunchPlan
    recipe: Recipe
    """The resolved recipe the plan was compiled from (overrides and flags merged in)."""
    endpoint_given: bool
    """True when the recipe names the rendezvous endpoint; False when the scheduler picks it
    (then `plan.rdzv_endpoint` is the scheduler's choice)."""

    @property
    def rdzv_host(self) -> str:
        return split_endpoint(self.plan.rdzv_endpoint)[0]

    @property
    def rdzv_port(self) -> int:
        return split_endpoint(self.plan.rdzv_endpoint)[1]

    def recipe_yaml(self, with_endpoint: bool = True) -> str:
        """The resolved recipe as YAML; without the endpoint the scheduler picked, when asked
        (a job that sets it when it runs)."""
        if with_endpoint or self.endpoint_given:
            return recipe_to_yaml(self.recipe)
        bare = copy.deepcopy(self.recipe)
        bare.elastic.rdzv.endpoint = ""
        return recipe_to_yaml(bare)


def compile_for_scheduler(request: ExportRequest, scheduler: str,
                          default_endpoint: Callable[[Recipe], str]) -> SchedulerLaunch:
    """Load the recipe as `train` does, check it can run under `scheduler`, plan its launch.

    `default_endpoint(recipe)` is the rendezvous endpoint to plan with when the recipe names
    none.
    """
    path = find_recipe(request.recipe)
    overrides = with_flags(request.overrides, request.flags)
    recipe = load_recipe(path, overrides)
    _check_schedulable(recipe, scheduler)
    given = bool(recipe.elastic.rdzv.endpoint)
    if not given:
        recipe.elastic.rdzv.endpoint = default_endpoint(recipe)
    try:
        plan = plan_launch(recipe, path, overrides)
    except ValueError as err:
        raise UserError(str(err)) from None
    return SchedulerLaunch(plan, recipe, given)


def _check_schedulable(recipe: Recipe, scheduler: str) -> None:
    elastic = recipe.elastic
    if elastic.local_addr:
        raise UserError(f"elastic.local_addr: '{elastic.local_addr}' names one node, but a "
                        f"{scheduler} job runs the same command on every node; remove it "
                        "(each node then announces its own host name)")
    if not elastic.rdzv.endpoint:
        return
    for endpoint in elastic.rdzv.endpoint.split(","):
        host, port = split_endpoint(endpoint)
        if _is_loopback(host):
            raise UserError(f"elastic.rdzv.endpoint: '{endpoint}' is a loopback address the "
                            f"other nodes of a {scheduler} job cannot reach; give an address "
                            "every node reaches, or none to let the scheduler pick the "
                            "rendezvous host")
        if port == 0:
            raise UserError(f"elastic.rdzv.endpoint: '{endpoint}' has port 0, which every node "
                            "would pick differently; give a fixed port (e.g. 29400)")


def split_endpoint(endpoint: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` -> (host, port), of the first of a comma-separated list (etcd
    members); the recipe checks already vouch for it."""
    host, _, port = endpoint.split(",")[0].strip().rpartition(":")
    return host.strip("[]"), int(port)


def _is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def write_output(text: str, output: str | None) -> None:
    """Print `text`, or write it to `output` whole: a regular file is replaced by a renamed
    temporary file, so a failed write leaves the old one; a device or pipe is written to."""
    if output is None:
        print(text, end="")
        return
    path = Path(output).expanduser()
    if path.is_dir():
        raise UserError(f"-o {output}: is a directory; give a file name")
    try:
        if path.exists() and not path.is_file():
            with open(path, "w") as stream:
                stream.write(text)
            return
        path = path.resolve()
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            temporary.write_text(text)
            if path.exists():  # keep the mode of the file it replaces
                temporary.chmod(path.stat().st_mode & 0o7777)
            temporary.replace(path)
        finally:
            temporary.unlink(missing_ok=True)
    except OSError as err:
        raise UserError(f"-o {output}: cannot write ({err.strerror}); give a writable "
                        "path") from None
