"""Value checks the type system cannot express: ranges, choices, and the `MIN:MAX` node range.

Each check returns `(key, message)` pairs so the loader can name the key and its file line.
"""

from __future__ import annotations

import re
from pathlib import Path

from elasticml.components import is_component
from elasticml.recipe.schema import Recipe

Problem = tuple[str, str]

CHOICES = {
    "optimizer.name": ("sgd", "adam", "adamw"),
    "schedule.name": ("constant", "cosine", "linear"),
    "trainer.batch_policy": ("fixed", "linear"),
    "trainer.device": ("auto", "cpu", "cuda"),
    "trainer.precision": ("fp32", "bf16"),
    "trainer.strategy": ("ddp", "fsdp", "hsdp"),
    "trainer.early_stopping.mode": ("auto", "max", "min"),
    "elastic.rdzv.backend": ("c10d", "etcd", "etcd-v2"),
}

_NODES = re.compile(r"^\s*(\d+)\s*(?::\s*(\d+)\s*)?$")
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def parse_nnodes(text: str) -> tuple[int, int]:
    """`"2"` -> (2, 2), `"1:4"` -> (1, 4); ValueError with the reason otherwise."""
    match = _NODES.match(str(text))
    if not match:
        raise ValueError(f"'{text}' is not N or MIN:MAX (e.g. 1:2)")
    low = int(match.group(1))
    high = int(match.group(2)) if match.group(2) else low
    if low < 1:
        raise ValueError(f"'{text}': at least 1 node is needed")
    if high < low:
        raise ValueError(f"'{text}': MIN is larger than MAX")
    return low, high


def check_recipe(recipe: Recipe) -> list[Problem]:
    problems: list[Problem] = []
    for key, allowed in CHOICES.items():
        section, name = key.rsplit(".", 1)
        if is_component(_section(recipe, section)):
            continue
        value = getattr(_section(recipe, section), name)
        if value not in allowed:
            problems.append((key, f"'{value}' is not one of {', '.join(allowed)}"))
    problems += _check_run(recipe) + _check_trainer(recipe) + _check_elastic(recipe)
    problems += _check_task(recipe) + _check_faults(recipe)
    return problems


def recipe_path(recipe: Recipe, value: str) -> Path:
    """A path written in the recipe: relative ones are relative to the recipe's folder."""
    path = Path(value).expanduser()
    if path.is_absolute() or not recipe.run.recipe_dir:
        return path
    return Path(recipe.run.recipe_dir) / path


def _section(recipe: Recipe, dotted: str):
    node = recipe
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def _positive(problems: list[Problem], key: str, value, allow_zero: bool = False) -> None:
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        problems.append((key, f"must be {'>= 0' if allow_zero else '> 0'}, got {value}"))


def _check_run(recipe: Recipe) -> list[Problem]:
    if not _RUN_ID.match(recipe.run_id):
        key = "run.id" if recipe.run.id else "run.name"
        return [(key, f"'{recipe.run_id}' must be letters, digits, '.', '_' or '-' "
                      "(it names a directory and the rendezvous)")]
    return []


def _check_trainer(recipe: Recipe) -> list[Problem]:
    t, problems = recipe.trainer, []
    if (t.max_steps is None) == (t.epochs is None):
        problems.append(("trainer.max_steps", "set exactly one of trainer.max_steps and "
                                              "trainer.epochs"))
    _positive(problems, "trainer.max_steps", t.max_steps)
    _positive(problems, "trainer.epochs", t.epochs)
    _positive(problems, "trainer.global_batch_size", t.global_batch_size)
    _positive(problems, "trainer.micro_batch_size", t.micro_batch_size)
    for key in ("eval_every", "checkpoint_every"):
        _positive(problems, f"trainer.{key}", getattr(t, key), allow_zero=True)
    _positive(problems, "trainer.keep_checkpoints", t.keep_checkpoints)
    _positive(problems, "trainer.log_every", t.log_every)
    _positive(problems, "trainer.threads", t.threads)
    problems += _check_early_stopping(recipe) + _check_key_file(recipe)
    if t.checkpoint_dir and "://" in t.checkpoint_dir:
        problems.append(("trainer.checkpoint_dir", f"'{t.checkpoint_dir}': a URL; checkpoints "
                         "are written to a filesystem path (mount the bucket or share, and "
                         "name the mount point)"))
    if t.strategy != "ddp" and t.encrypt_checkpoints:
        problems.append(("trainer.encrypt_checkpoints", f"not available with strategy "
                         f"{t.strategy} (its sharded checkpoints are written by torch."
                         "distributed.checkpoint, unencrypted): use strategy ddp, or an "
                         "encrypted filesystem for trainer.checkpoint_dir"))
    if not is_component(recipe.optimizer):
        _positive(problems, "optimizer.lr", recipe.optimizer.lr)
        _positive(problems, "optimizer.weight_decay", recipe.optimizer.weight_decay,
                  allow_zero=True)
        _positive(problems, "optimizer.grad_clip", recipe.optimizer.grad_clip)
        if len(recipe.optimizer.betas) != 2:
            problems.append(("optimizer.betas", "needs two numbers, e.g. [0.9, 0.999]"))
    if is_component(recipe.schedule):
        if t.batch_policy == "linear":
            problems.append(("trainer.batch_policy", "linear scales a named schedule's learning "
                             "rate; with schedule._target_ use batch_policy fixed"))
    else:
        _positive(problems, "schedule.warmup_steps", recipe.schedule.warmup_steps,
                  allow_zero=True)
        if not 0 <= recipe.schedule.min_lr_ratio <= 1:
            problems.append(("schedule.min_lr_ratio", "must be between 0 and 1"))
    return problems


def _check_early_stopping(recipe: Recipe) -> list[Problem]:
    stop, problems = recipe.trainer.early_stopping, []
    _positive(problems, "trainer.early_stopping.patience", stop.patience, allow_zero=True)
    _positive(problems, "trainer.early_stopping.min_delta", stop.min_delta, allow_zero=True)
    if stop.patience and not recipe.trainer.eval_every:
        problems.append(("trainer.early_stopping.patience", "early stopping counts "
                         "validations, and trainer.eval_every is 0 (only at the end): set "
                         "trainer.eval_every"))
    if stop.metric and recipe.own_data and stop.metric != "loss" and \
            stop.metric not in recipe.metrics:
        problems.append(("trainer.early_stopping.metric", f"'{stop.metric}' is not loss or one "
                         f"of metrics ({', '.join(recipe.metrics) or 'none'})"))
    return problems


def _check_key_file(recipe: Recipe) -> list[Problem]:
    """The key file must exist; its content is checked (never shown) when the job starts."""
    name = recipe.trainer.checkpoint_key_file
    if name and not recipe_path(recipe, name).is_file():
        return [("trainer.checkpoint_key_file", f"no such file: {recipe_path(recipe, name)}")]
    return []


def _check_elastic(recipe: Recipe) -> list[Problem]:
    e, problems = recipe.elastic, []
    try:
        parse_nnodes(e.nnodes)
    except ValueError as err:
        problems.append(("elastic.nnodes", str(err)))
    _positive(problems, "elastic.nproc_per_node", e.nproc_per_node)
    _positive(problems, "elastic.max_restarts", e.max_restarts, allow_zero=True)
    _positive(problems, "elastic.hang_timeout", e.hang_timeout)
    _positive(problems, "elastic.collective_timeout", e.collective_timeout)
    _positive(problems, "elastic.stop_grace", e.stop_grace)
    for key in ("join_timeout", "last_call", "regroup_wait", "group_timeout", "node_timeout"):
        _positive(problems, f"elastic.rdzv.{key}", getattr(e.rdzv, key),
                  allow_zero=key in ("last_call", "regroup_wait"))
    if 0 < e.stop_grace <= e.collective_timeout:
        problems.append(("elastic.stop_grace", f"{e.stop_grace:g} s is not above "
                         f"elastic.collective_timeout ({e.collective_timeout:g} s): a worker "
                         "stopped while it waits in a collective would be killed before it "
                         "saves; raise stop_grace or lower collective_timeout"))
    problems += _check_rdzv(e.rdzv)
    return problems


_HOST_PORT = re.compile(r"^[^:,\s]+:\d{1,5}$|^\[[0-9a-fA-F:]+\]:\d{1,5}$")


def _check_rdzv(rdzv) -> list[Problem]:
    problems = []
    endpoints = rdzv.endpoint.split(",") if rdzv.endpoint else []
    if len(endpoints) > 1 and rdzv.backend != "etcd":
        problems.append(("elastic.rdzv.endpoint", f"'{rdzv.endpoint}': only backend etcd takes "
                                                  "several endpoints (its members)"))
    elif any(not _HOST_PORT.match(part.strip()) for part in endpoints):
        problems.append(("elastic.rdzv.endpoint", f"'{rdzv.endpoint}' is not HOST:PORT"
                         + (" (or several, comma-separated)" if rdzv.backend == "etcd" else "")))
    if rdzv.backend.startswith("etcd") and not rdzv.endpoint:
        problems.append(("elastic.rdzv.endpoint", f"{rdzv.backend} needs the etcd members' "
                                                  "HOST:PORT"))
    if rdzv.standalone_store and (rdzv.backend != "c10d" or not rdzv.endpoint):
        problems.append(("elastic.rdzv.standalone_store", "needs backend c10d and the endpoint "
                                                          "of `elasticml rendezvous serve`"))
    etcd_only = ("ca_cert", "client_cert", "client_key", "user", "password_file")
    for key in etcd_only:
        if getattr(rdzv, key) and not rdzv.backend.startswith("etcd"):
            problems.append((f"elastic.rdzv.{key}", f"only for an etcd backend, not "
                                                    f"{rdzv.backend}"))
    for key in ("user", "password_file"):
        if getattr(rdzv, key) and rdzv.backend == "etcd-v2":
            problems.append((f"elastic.rdzv.{key}", "etcd-v2 has no user here: use backend etcd "
                                                    "(etcd's v3 API)"))
    if rdzv.password_file and not rdzv.user:
        problems.append(("elastic.rdzv.password_file", "a password needs elastic.rdzv.user"))
    if bool(rdzv.client_cert) != bool(rdzv.client_key):
        problems.append(("elastic.rdzv.client_cert" if rdzv.client_cert else
                         "elastic.rdzv.client_key", "client_cert and client_key go together"))
    return problems


def _check_task(recipe: Recipe) -> list[Problem]:
    task, problems = recipe.task, []
    data = recipe.data
    _positive(problems, "data.loader.num_workers", data.loader.num_workers, allow_zero=True)
    _positive(problems, "data.loader.prefetch_factor", data.loader.prefetch_factor)
    _positive(problems, "data.loader.eval_batch_size", data.loader.eval_batch_size)
    if task is None:
        return problems + _check_own_data(recipe)
    for key in ("loss", "metrics"):
        if getattr(recipe, key):
            problems.append((key, f"the bundled task '{task.name}' has its own {key}; name your "
                                  "datasets under data to bring your own"))
    if data.collate_fn is not None:
        problems.append(("data.collate_fn", "only for your own datasets (data.train/val/test)"))
    for key in ("val_fraction", "test_fraction"):
        share = getattr(task, key, None)
        if share is not None and not 0 < share < 1:
            problems.append((f"task.{key}", f"must be between 0 and 1, got {share}"))
    path = getattr(task, "path", None)
    if task.name == "custom" and not path:
        problems.append(("task.path", "a custom task needs a data file (CSV or NPZ)"))
    if path and not recipe_path(recipe, path).is_file():
        problems.append(("task.path", f"data file not found: {recipe_path(recipe, path)}"))
    if task.name == "recsys":
        problems += _check_recsys(task)
    if task.name == "movielens":
        problems += _check_movielens(task)
    if task.name == "sequence":
        problems += _check_sequence(task)
    return problems


def _check_own_data(recipe: Recipe) -> list[Problem]:
    """The shape of a recipe with its own datasets; imports are checked by `components`."""
    data, problems = recipe.data, []
    named = [key for key in ("train", "val", "test") if getattr(data, key) is not None]
    if data.splits is not None and named:
        problems.append(("data.splits", f"name the datasets either with data.splits or with "
                                        f"data.train/val/test, not both (also: {named[0]})"))
    elif data.splits is None and len(named) < 3:
        missing = [key for key in ("train", "val", "test") if key not in named]
        problems.append((f"data.{missing[0]}", "your own data needs train, val and test "
                                               "datasets (or one data.splits factory)"))
    for key in ("train", "val", "test", "splits", "collate_fn"):
        value = getattr(data, key)
        if value is not None and not is_component(value):
            problems.append((f"data.{key}", "needs a _target_ (e.g. {_target_: mydata.Set})"))
    if recipe.loss is not None and not is_component(recipe.loss):
        problems.append(("loss", "needs a _target_ (e.g. {_target_: torch.nn.CrossEntropyLoss})"))
    for name, metric in recipe.metrics.items():
        if not is_component(metric):
            problems.append((f"metrics.{name}", "needs a _target_ (e.g. {_target_: "
                                                "torchmetrics.classification.MulticlassAccuracy"
                                                ", num_classes: 10})"))
    best = recipe.trainer.best_metric
    if best and best != "loss" and best not in recipe.metrics:
        problems.append(("trainer.best_metric", f"'{best}' is not loss or one of metrics "
                                                f"({', '.join(recipe.metrics) or 'none'})"))
    return problems


def _check_movielens(task) -> list[Problem]:
    problems: list[Problem] = []
    for key in ("negatives", "top_k"):
        _positive(problems, f"task.{key}", getattr(task, key))
    if task.loss not in ("softmax", "bpr"):
        problems.append(("task.loss", f"'{task.loss}' is not one of softmax, bpr"))
    return problems


def _check_recsys(task) -> list[Problem]:
    problems: list[Problem] = []
    for key in ("users", "items", "clusters", "negatives", "top_k"):
        _positive(problems, f"task.{key}", getattr(task, key))
    if not 3 <= task.interactions_per_user <= task.items:
        problems.append(("task.interactions_per_user", "must be between 3 (one each for "
                         f"training, validation and test) and task.items ({task.items})"))
    if not 0 <= task.affinity <= 1:
        problems.append(("task.affinity", f"must be between 0 and 1, got {task.affinity}"))
    _positive(problems, "task.popularity", task.popularity, allow_zero=True)
    if task.loss not in ("softmax", "bpr"):
        problems.append(("task.loss", f"'{task.loss}' is not one of softmax, bpr"))
    return problems


def _check_sequence(task) -> list[Problem]:
    problems: list[Problem] = []
    for key in ("vocab", "samples", "lag"):
        _positive(problems, f"task.{key}", getattr(task, key))
    if task.length <= task.lag + 1:
        problems.append(("task.length", f"must be larger than task.lag + 1 ({task.lag + 1})"))
    if not 0 <= task.noise < 1:
        problems.append(("task.noise", f"must be in [0, 1), got {task.noise}"))
    return problems


def _check_faults(recipe: Recipe) -> list[Problem]:
    f, problems = recipe.faults, []
    for what in ("kill", "hang"):
        rank, step = getattr(f, f"{what}_rank"), getattr(f, f"{what}_step")
        if (rank is None) != (step is None):
            problems.append((f"faults.{what}_step", f"set both faults.{what}_rank and "
                                                    f"faults.{what}_step"))
        _positive(problems, f"faults.{what}_rank", rank, allow_zero=True)
        _positive(problems, f"faults.{what}_step", step)
    _positive(problems, "faults.step_delay", f.step_delay, allow_zero=True)
    return problems
