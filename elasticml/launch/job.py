"""`elasticml train`: recipe -> plan -> (dry run | agent with live console and TensorBoard)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from elasticml.errors import UserError
from elasticml.launch.plan import LaunchPlan, plan_launch
from elasticml.recipe.load import find_recipe, load_recipe, recipe_to_yaml
from elasticml.recipe.schema import Recipe
from elasticml.rundir import RunDir

FLAG_KEYS = {
    "nnodes": "elastic.nnodes",
    "nproc_per_node": "elastic.nproc_per_node",
    "rdzv_endpoint": "elastic.rdzv.endpoint",
    "rdzv_backend": "elastic.rdzv.backend",
    "run_id": "run.id",
    "run_dir": "run.dir",
    "max_restarts": "elastic.max_restarts",
    "local_addr": "elastic.local_addr",
}


@dataclass
class TrainRequest:
    recipe: str
    overrides: list[str]
    flags: dict[str, object]
    dry_run: bool = False
    quiet: bool = False
    verbose: bool = False


def compile_request(request: TrainRequest) -> tuple[Recipe, LaunchPlan]:
    """Load and check the recipe and compile its launch; every failure is a `UserError`."""
    path = find_recipe(request.recipe)
    overrides = with_flags(request.overrides, request.flags)
    recipe = load_recipe(path, overrides)
    from elasticml.tasks.validate import check_components, check_data_files

    check_components(recipe)  # the user's own recipe: its code may be imported here
    check_data_files(recipe)
    try:
        plan = plan_launch(recipe, path, overrides)
    except ValueError as err:
        raise UserError(str(err)) from None
    return recipe, plan


def with_flags(overrides: list[str], flags: dict[str, object]) -> list[str]:
    """`key=value` overrides followed by the given flags as overrides (flags win)."""
    return list(overrides) + [f"{FLAG_KEYS[name]}={value}" for name, value in flags.items()
                              if value is not None]


def dry_run_text(recipe: Recipe, plan: LaunchPlan) -> str:
    lines = ["# resolved recipe", recipe_to_yaml(recipe).rstrip(), "",
             "# batch plan per world size (global batch, per-rank shares, micro-batch x steps)"]
    for bp in plan.batch_plans:
        shares = "/".join(str(s) for s in sorted(set(bp.shares), reverse=True))
        lines.append(f"#   world {bp.world_size:>3}: global {bp.global_batch}, per rank {shares}, "
                     f"micro-batch {bp.micro_batch} x {bp.accumulation}, lr x{bp.lr_scale:g}")
    lines += ["", "# equivalent torchrun command (run it on every node)"]
    from elasticml.launch.rendezvous import is_private

    if not is_private(plan.rdzv_endpoint):
        lines.append("# every node needs the same job key in ELASTICML_JOB_KEY (not shown) or "
                     "elastic.rdzv.job_key_file")
    if recipe.elastic.rdzv.user:
        lines.append("# and the etcd password of user "
                     f"'{recipe.elastic.rdzv.user}' in ELASTICML_ETCD_PASSWORD (not shown) or "
                     "elastic.rdzv.password_file")
    if recipe.trainer.encrypt_checkpoints:
        lines.append("# checkpoints are encrypted: every node needs the same checkpoint key in "
                     "ELASTICML_CHECKPOINT_KEY (not shown) or trainer.checkpoint_key_file")
    lines.append(plan.torchrun_command())
    return "\n".join(lines)


def train(request: TrainRequest) -> int:
    recipe, plan = compile_request(request)
    if request.dry_run:
        print(dry_run_text(recipe, plan))
        return 0
    _require_job_key(recipe, plan)
    _check_etcd_access(plan)
    _pass_checkpoint_key(recipe)
    run_dir = RunDir(plan.run_dir).create()
    finished = _finished_step(run_dir)
    if finished is not None and recipe.trainer.max_steps and finished >= recipe.trainer.max_steps:
        print(f"run {plan.run_id} already finished at step {finished} ({run_dir.path}); "
              "pass --run-id NEW to start another, or raise trainer.max_steps to train on")
        return 0
    stopped = _stopped_early(run_dir, recipe)
    if stopped:
        print(f"run {plan.run_id} already {stopped} ({run_dir.path}); pass --run-id NEW to "
              "start another, or raise trainer.early_stopping.patience to train on")
        return 0
    plan = plan.pinned(pin_recipe(run_dir, recipe))
    from elasticml.launch import zygote

    with contextlib.suppress(OSError):  # launch() tries again, and says why it cannot
        zygote.prepare(plan)  # warm workers: the zygote imports torch while this process does

    from torch.distributed.elastic.multiprocessing.api import SignalException

    from elasticml.launch.agent import WorkerInputError, launch
    from elasticml.telemetry.console import LiveConsole, Progress
    from elasticml.telemetry.events import EventLog

    events = EventLog(run_dir.events, "agent")
    progress = Progress(run_id=plan.run_id, node=events.node)
    with LiveConsole(progress, quiet=request.quiet, verbose=request.verbose) as console:
        follower = _Follower(run_dir, console, recipe_to_yaml(recipe))
        follower.start()
        try:
            outcome = launch(plan, events)
        except KeyboardInterrupt:
            outcome = None
        except SignalException:
            print(f"stopped by a signal; run the same command to resume {plan.run_id}",
                  file=sys.stderr)
            return 130
        except WorkerInputError as err:
            raise UserError(str(err)) from None
        except Exception as err:  # noqa: BLE001 - shown as one line; the events keep the detail
            raise UserError(f"{type(err).__name__}: {err}") from None
        finally:
            follower.stop()
    if outcome is None:
        print(f"interrupted; run the same command to resume {plan.run_id}", file=sys.stderr)
        return 130
    if not outcome.succeeded:
        causes = "; ".join(f"rank {r}: {f['error']}" for r, f in sorted(outcome.failures.items()))
        print(f"training failed after {outcome.seconds:.1f} s: {causes or 'see the logs'}\n"
              f"details: elasticml report {run_dir.path}", file=sys.stderr)
        return 1
    if not outcome.needed:
        print(f"done: {plan.run_id} finished without this node (it waited as a spare) "
              f"-> {run_dir.path}")
        return 0
    summary = _final_summary(run_dir)
    print(f"done: {plan.run_id} in {outcome.seconds:.1f} s{summary} -> {run_dir.path}")
    return 0


def _require_job_key(recipe: Recipe, plan: LaunchPlan) -> None:
    """A rendezvous other machines can reach needs the job key on every node."""
    from elasticml.jobkey import ENV, read_job_key
    from elasticml.launch.rendezvous import is_private

    if is_private(plan.rdzv_endpoint):
        return
    if read_job_key(recipe.elastic.rdzv.job_key_file) is None:
        raise UserError(
            f"the rendezvous at {plan.rdzv_endpoint} is reachable from other machines, so the "
            f"job needs a key: set {ENV} to the same secret on every node (e.g. `export "
            f"{ENV}=$(python3 -c 'import secrets; print(secrets.token_hex(32))')`), or "
            "elastic.rdzv.job_key_file")


def _pass_checkpoint_key(recipe: Recipe) -> None:
    """With `trainer.encrypt_checkpoints`, the key must be there and well formed before
    anything starts. The workers get it through the environment they inherit, never on a
    command line or in the plan (a key read from `trainer.checkpoint_key_file` too)."""
    from elasticml.train.encryption import ENV, recipe_cipher

    cipher = recipe_cipher(recipe)
    if cipher.key is not None:
        os.environ[ENV] = base64.b64encode(cipher.key.raw).decode()


def pin_recipe(run_dir: RunDir, recipe: Recipe) -> Path:
    """Write the resolved recipe into the run dir for this launch's workers to read, so that an
    edit of the user's file mid-run does not reach a restarted worker. Content-addressed
    (`pinned/recipe-<sha256>.yaml`, written atomically, once), so every launch of the run and
    every node sharing the run dir finds its own copy intact."""
    from elasticml.train.checkpoint import write_atomically

    text = recipe_to_yaml(recipe)
    path = run_dir.pinned / f"recipe-{hashlib.sha256(text.encode()).hexdigest()[:16]}.yaml"
    if not path.is_file() or path.read_text() != text:
        write_atomically(path, text.encode())
    return path


def _check_etcd_access(plan: LaunchPlan) -> None:
    """An etcd rendezvous this node cannot use (unreadable certificate files, a CA that did
    not sign the servers' certificates, a wrong password) is refused before anything runs."""
    backend = plan.rdzv_backend.removeprefix("elasticml-")
    if backend not in ("etcd", "etcd-v2"):
        return
    from elasticml.launch.etcd_access import EtcdAccessError, access_from_conf
    from elasticml.launch.etcd_kv import check_access

    try:
        check_access(access_from_conf(plan.rdzv_endpoint, plan.rdzv_configs.get),
                     v3=backend == "etcd")
    except EtcdAccessError as err:
        raise UserError(str(err)) from None


class _Follower(threading.Thread):
    """Tails the run's events into the live console and TensorBoard."""

    def __init__(self, run_dir: RunDir, console, recipe_yaml: str) -> None:
        super().__init__(daemon=True, name="event-follower")
        from elasticml.telemetry.events import EventTail

        self.console, self.run_dir, self.recipe_yaml = console, run_dir, recipe_yaml
        self.tail = EventTail(run_dir.events)
        self.history = self.tail.poll()  # earlier launches of this run: history, not news
        self.pending: list[dict] = []
        self.board = None
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(0.25):
            self._drain()
        self._drain(final=True)
        if self.board is not None:
            self.board.close()

    def _drain(self, final: bool = False) -> None:
        fresh = self.tail.poll()
        if fresh:
            self.console.feed(fresh)
        self.pending += fresh
        if self.board is None and (final or any(e["kind"] == "step" for e in fresh)):
            # Opened once training runs, not during start-up: importing TensorBoard's writer
            # costs ~0.4 s of CPU that the workers' start-up need not compete with.
            from elasticml.telemetry.tensorboard import TensorBoardSink

            self.board = TensorBoardSink(self.run_dir.tensorboard, recipe_yaml=self.recipe_yaml,
                                         history=self.history)
        if self.board is not None and self.pending:
            self.board.feed(self.pending)
            self.pending = []

    def stop(self) -> None:
        if self.is_alive():
            self._halt.set()
            self.join(timeout=10)


def _finished_step(run_dir: RunDir) -> int | None:
    report = run_dir.reports / "final.json"
    try:
        return int(json.loads(report.read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _stopped_early(run_dir: RunDir, recipe: Recipe) -> str | None:
    """"stopped early at step N: ..." when the run's last launch stopped early and the recipe
    would stop it again at once (same metric, patience not raised)."""
    try:
        stopped = json.loads((run_dir.reports / "final.json").read_text())["stopped_early"]
        metric, stale, message = stopped["metric"], stopped["stale"], stopped["message"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    wanted = recipe.trainer.early_stopping
    same = (wanted.metric or recipe.trainer.best_metric or metric) == metric
    return message if same and 0 < wanted.patience <= stale else None


def _final_summary(run_dir: RunDir) -> str:
    try:
        report = json.loads((run_dir.reports / "final.json").read_text())
    except (OSError, ValueError):
        return ""
    test = {k: v for k, v in report.get("test", {}).items() if isinstance(v, float | int)}
    shown = ", ".join(f"test {k} {v:.4f}" for k, v in list(test.items())[:3])
    stopped = report.get("stopped_early")
    if isinstance(stopped, dict):
        shown += (f" (of best.pt, step {report.get('weights_step')}); "
                  f"{stopped.get('message', 'stopped early')}")
    return f", step {report.get('step')}" + (f", {shown}" if shown else "")
