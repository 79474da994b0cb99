"""Turn a recipe file, `key=value` overrides and CLI flags into one checked `Recipe`.

Order of precedence, last wins: schema defaults < file < `key=value` overrides < flags.
Every problem becomes a `UserError` naming the key, and the file line when the key came
from the file, so the user never sees an OmegaConf traceback.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from elasticml.components import is_component
from elasticml.errors import UserError
from elasticml.recipe.checks import check_recipe
from elasticml.recipe.schema import MODELS, TASKS, OptimizerConfig, Recipe, ScheduleConfig

BUNDLED = Path(__file__).resolve().parent.parent / "bundled_recipes"
SOURCE_TREE = Path(__file__).resolve().parents[2] / "recipes"


def recipe_dirs() -> list[Path]:
    """Where bundled recipes live: next to the package when installed, `recipes/` in a checkout."""
    return [d for d in (SOURCE_TREE, BUNDLED) if d.is_dir()]


def find_recipe(name_or_path: str) -> Path:
    """A path as given, or the name of a bundled recipe (`digits` or `digits.yaml`)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    if path.is_dir():
        raise UserError(f"{name_or_path} is a directory; give a recipe .yaml file")
    stem = path.name.removesuffix(".yaml")
    inside = Path(*path.parts[1:]) if path.parts and path.parts[0] == "recipes" else path
    if not path.is_absolute():  # `digits`, `byo/spirals`, `recipes/byo/spirals.yaml`
        for root in recipe_dirs():
            for candidate in (root / inside.parent / f"{stem}.yaml",
                              *root.glob(f"**/{stem}.yaml")):
                if candidate.is_file():
                    return candidate
    raise UserError(
        f"recipe file not found: {name_or_path} (see `elasticml recipes` for bundled ones)"
    )


def load_recipe(
    source: str | Path | dict,
    overrides: list[str] | None = None,
    flags: dict[str, Any] | None = None,
) -> Recipe:
    """Load, merge and check a recipe. `source` is a path, a bundled name or a plain dict."""
    if isinstance(source, dict):
        raw, path, text = OmegaConf.create(source), None, None
    else:
        path = find_recipe(str(source))
        text = _read_text(path)
        raw, path = _parse_yaml(text, path), path
    given = {item.partition("=")[0].strip() for item in overrides or []}
    given |= {key for key, value in (flags or {}).items() if value is not None}
    try:
        merged = OmegaConf.merge(raw, _parse_overrides(overrides or []), _nested(flags or {}))
        schema = OmegaConf.structured(_schema_for(merged))
        config = OmegaConf.merge(schema, merged)
        recipe = OmegaConf.to_object(config)
    except OmegaConfBaseException as err:
        raise UserError(_explain(err, path if not _given(err, given) else None, text)) from None
    if path is not None and not recipe.run.recipe_dir:
        # A resolved copy (pinned in the run dir, exported for a scheduler) keeps the folder
        # of the recipe it was resolved from: its relative paths and code are found there.
        recipe.run.recipe_dir = str(path.resolve().parent)
    problems = check_recipe(recipe)
    if problems:
        key, message = problems[0]
        where = "" if key in given else _where(key, path, text)
        raise UserError(f"{where}{key}: {message}")
    return recipe


def recipe_to_yaml(recipe: Recipe) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(recipe))


def recipe_to_dict(recipe: Recipe) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(recipe), resolve=True)


def recipe_from_dict(data: dict) -> Recipe:
    """Rebuild a recipe stored in a run dir or a checkpoint (already checked once)."""
    return load_recipe(data)


class RecipeLoader(yaml.SafeLoader):
    """YAML 1.1 minus base-60 integers, so `nnodes: 1:2` stays the string "1:2" (not 62)."""


RecipeLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:int"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)


TRAINING_SECTIONS = ("task", "data", "model", "loss", "metrics", "optimizer", "schedule",
                     "trainer")
VOLATILE_TRAINER_KEYS = ("max_steps", "epochs", "eval_every", "checkpoint_every",
                         "keep_checkpoints", "async_checkpoint", "log_every", "threads",
                         "micro_batch_size", "early_stopping", "encrypt_checkpoints",
                         "checkpoint_key_file", "checkpoint_dir", "activation_checkpointing")
"""Trainer keys a run may change between launches without becoming another training: how
long it trains (when it stops early included), how often it reports or saves, how and where
its checkpoints are kept on disk, how a rank cuts its share into micro-batches (the loss is
normalised by the global batch, so the update is the same), and whether activations are
recomputed (the same numbers, less memory)."""
DEFAULT_ONLY_TRAINER_KEYS = {"strategy": "ddp"}
"""Trainer keys that joined the hash after its scheme was fixed: left out while they hold
their default, so a run started before them still resumes."""
HASH_SCHEME = 2
"""Stored next to `training_hash` in checkpoints; a checkpoint of another scheme is not
compared (its hash was computed from other fields)."""
WHOLE_FILE_LIMIT = 64 * 1024**2
SAMPLE_BYTES = 1024**2


def training_hash(recipe: Recipe) -> str:
    """Fingerprint of what decides the maths; nodes that disagree on it must not train together
    and a checkpoint trained under another one is not resumed.

    In: the sections task, data (but `data.loader`), model, loss, metrics, optimizer, schedule
    and trainer (without `VOLATILE_TRAINER_KEYS`), `run.seed`, and the bytes of the files the
    recipe names: `task.path`, and the source file of every component of the user's own
    (`mynet.Net` -> mynet.py; not what it imports, nor the data a Dataset reads from a folder).
    A file over `WHOLE_FILE_LIMIT` (64 MiB) is fingerprinted by its size and three 1 MiB
    samples (start, middle, end) instead of being read whole, which catches appends,
    truncations and rewritten headers but not every edit in between. Out: `run` (but the
    seed), `elastic`, `faults`.
    """
    data = recipe_to_dict(recipe)
    relevant = {k: data[k] for k in TRAINING_SECTIONS}
    relevant["seed"] = data["run"]["seed"]
    for volatile in VOLATILE_TRAINER_KEYS:
        relevant["trainer"].pop(volatile, None)
    for key, default in DEFAULT_ONLY_TRAINER_KEYS.items():
        if relevant["trainer"].get(key) == default:
            relevant["trainer"].pop(key)
    relevant["files"] = {key: _file_fingerprint(path) for key, path in _named_files(recipe)}
    relevant["data"].pop("loader", None)  # how samples are read, not which
    blob = json.dumps(relevant, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _named_files(recipe: Recipe) -> list[tuple[str, Path | None]]:
    """The data file of a bundled task (`task.path`) and the source file of every component
    whose code is the user's own (not elasticml's, torch's or torchmetrics')."""
    from elasticml.recipe.checks import recipe_path

    found = []
    if getattr(recipe.task, "path", None):
        found.append(("task.path", recipe_path(recipe, recipe.task.path)))
    data = recipe_to_dict(recipe)
    for key, target in _user_targets({k: data.get(k) for k in TRAINING_SECTIONS}, ""):
        found.append((key, _code_file(target, recipe.run.recipe_dir)))
    return found


def _user_targets(node, key: str):
    from elasticml.components import TRUSTED_CLASSES, is_component, target_of

    if is_component(node):
        target = target_of(node)
        if target.split(".")[0] not in (*TRUSTED_CLASSES, "elasticml"):
            yield key or "recipe", target
    if isinstance(node, dict):
        for name, value in node.items():
            yield from _user_targets(value, f"{key}.{name}" if key else str(name))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _user_targets(value, f"{key}[{index}]")


def _code_file(dotted: str, folder: str | None) -> Path | None:
    """The source file of the module that defines `dotted` (`mynet.Net` -> mynet.py), found
    from the recipe's folder and `sys.path` as the workers find it (a dotted name's parent
    packages are imported to look inside them, as importing the component would)."""
    import importlib.util

    from elasticml.components import Code

    parts = dotted.split(".")
    with Code(folder).search_path():
        for cut in range(len(parts) - 1, 0, -1):
            try:
                found = importlib.util.find_spec(".".join(parts[:cut]))
            except (ImportError, ValueError):
                continue
            origin = getattr(found, "origin", None)
            if origin and Path(origin).is_file():
                return Path(origin)
    return None


def _file_fingerprint(path: Path | None) -> str:
    if path is None:
        return "not found"
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size <= WHOLE_FILE_LIMIT:
                return hashlib.sha256(handle.read()).hexdigest()
            digest = hashlib.sha256(str(size).encode())
            for start in (0, size // 2, size - SAMPLE_BYTES):
                handle.seek(start)
                digest.update(handle.read(SAMPLE_BYTES))
            return digest.hexdigest()
    except OSError:
        return "unreadable"


# --- helpers ---------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not a UTF-8 text file (byte {err.start}); a recipe is YAML "
                        "text") from None
    except OSError as err:
        raise UserError(f"{path}: cannot be read ({err.strerror})") from None


def _parse_yaml(text: str, path: Path) -> DictConfig:
    try:
        data = yaml.load(text, Loader=RecipeLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UserError(f"{path}{line}: malformed YAML: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise UserError(f"{path}: a recipe is a YAML mapping of sections, got {kind}")
    try:
        return OmegaConf.create(data)
    except OmegaConfBaseException as err:
        raise UserError(f"{path}: {err.msg if hasattr(err, 'msg') else err}") from None


def _parse_overrides(overrides: list[str]) -> DictConfig:
    nested: dict = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"override '{item}' is not key=value (e.g. trainer.max_steps=200)")
        try:
            parsed = yaml.load(value, Loader=RecipeLoader) if value else ""
        except yaml.YAMLError:
            parsed = value
        _put(nested, key.strip(), parsed)
    return OmegaConf.create(nested)


def _nested(flags: dict[str, Any]) -> DictConfig:
    """Flags arrive as dotted keys ("elastic.nnodes"); turn them into nested sections."""
    nested: dict = {}
    for key, value in flags.items():
        if value is not None:
            _put(nested, key, value)
    return OmegaConf.create(nested)


def _put(nested: dict, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        nested = nested.setdefault(part, {})
        if not isinstance(nested, dict):
            raise UserError(f"{dotted}: '{part}' is a value, not a section")
    nested[last] = value


DATA_KEYS = ("train", "val", "test", "splits")


def _schema_for(merged: DictConfig) -> Recipe:
    """The schema object whose sections match what the user chose: the `task` / `model`
    variants by name, free-form mappings for components (`_target_`), no `task` when the
    recipe names its own datasets under `data`."""
    own = any(OmegaConf.select(merged, f"data.{key}", default=None) is not None
              for key in DATA_KEYS)
    if own and merged.get("task") is not None:
        raise UserError("task: a recipe names its data either with task (a bundled task) or "
                        "with data.train/val/test (your own datasets), not both")
    task = None
    if not own:
        task_name = OmegaConf.select(merged, "task.name", default="digits")
        if task_name not in TASKS:
            raise UserError(f"task.name: unknown task '{task_name}' (choose from "
                            f"{', '.join(TASKS)}, or name your own datasets under data)")
        task = TASKS[task_name]()
    model = {}
    if not is_component(merged.get("model")):
        model_name = OmegaConf.select(merged, "model.name", default="cnn")
        if own:
            raise UserError("model: with your own data, name your model as "
                            "{_target_: module.Class, ...}")
        if model_name not in MODELS:
            raise UserError(f"model.name: unknown model '{model_name}' (choose from "
                            f"{', '.join(MODELS)}, or name your own as {{_target_: ...}})")
        model = MODELS[model_name]()
    optimizer = {} if is_component(merged.get("optimizer")) else OptimizerConfig()
    schedule = {} if is_component(merged.get("schedule")) else ScheduleConfig()
    return Recipe(task=task, model=model, optimizer=optimizer, schedule=schedule)


def _given(err: OmegaConfBaseException, given: set[str]) -> bool:
    """Did the offending key come from the command line rather than the file?"""
    key = getattr(err, "full_key", "") or ""
    return any(key == g or key.startswith(g + ".") or g.startswith(key + ".") for g in given)


def _explain(err: OmegaConfBaseException, path: Path | None, text: str | None) -> str:
    key = getattr(err, "full_key", "") or ""
    message = (getattr(err, "msg", None) or str(err)).splitlines()[0]
    if "not in" in message and "Key" in message:
        message = "unknown key (check spelling; `elasticml recipes keys` lists valid keys)"
    elif "could not be converted to" in message:
        wanted = message.rsplit(" ", 1)[-1].lower()
        value = message.split("'")[1] if "'" in message else "?"
        message = f"'{value}' is not a valid {wanted}"
    return f"{_where(key, path, text)}{key}: {message}" if key else message


def _where(key: str, path: Path | None, text: str | None) -> str:
    """`file:line: ` for a dotted key that stands in the recipe file, else `file: `."""
    if path is None:
        return ""
    line = _line_of(key, text) if text else None
    return f"{path}:{line}: " if line else f"{path}: "


def _line_of(dotted: str, text: str) -> int | None:
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return None
    for part in dotted.split("."):
        if not isinstance(node, yaml.MappingNode):
            return None
        for key_node, value_node in node.value:
            if key_node.value == part:
                found, node = key_node, value_node
                break
        else:
            return None
    return found.start_mark.line + 1
