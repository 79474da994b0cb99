"""Components named in a recipe by `_target_`, built by a small instantiate of our own.

The convention is Hydra's, so a recipe reads the same as in other projects:

    model:     {_target_: mynet.Net, width: 128}           # mynet.py beside the recipe
    optimizer: {_target_: torch.optim.AdamW, _partial_: true, lr: 0.001}

* `_target_` (or torchtune's `_component_`) is the dotted path of a class or function; the
  other keys are its keyword arguments.
* `_args_: [...]` are positional arguments; arguments given at the call site come first
  (`instantiate(cfg.optimizer, model.parameters())`, as torchtune does).
* `_partial_: true` returns `functools.partial` of the target instead of calling it.
* A value that is itself a component is built first (nesting, at any depth, lists included).
* A relative path among the arguments (a string naming a file or folder that exists relative
  to the recipe's folder) is passed as that absolute path, so a recipe works from any folder.

Where code is imported from: installed packages, `PYTHONPATH` and the recipe's own folder;
never the current directory by accident (`python -m` puts it first on `sys.path`, the
`elasticml` script does not, so it is taken out unless `PYTHONPATH` names it). With
`trusted_only` (eval of a checkpoint the user did not name code for) only elasticml's own
datasets and tasks and classes from torch and torchmetrics are built: a checkpoint cannot
make eval import or call anything else.

Every problem is a `UserError` naming the recipe key, so a bad recipe ends in one line.
hydra-core is not used: it pins omegaconf < 2.4.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import os
import sys
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from elasticml.errors import UserError

TARGET_KEYS = ("_target_", "_component_")
RESERVED = (*TARGET_KEYS, "_partial_", "_args_")
TRUSTED_CLASSES = ("torch", "torchmetrics")
"""Packages whose classes eval builds from a checkpoint's recipe without `--trust-code`."""
TRUSTED_MODULES = ("elasticml.data", "elasticml.tasks")
"""elasticml's own datasets, models and task code: any object of theirs."""


def is_component(node: Any) -> bool:
    return isinstance(node, Mapping) and any(key in node for key in TARGET_KEYS)


def target_of(node: Mapping) -> str:
    return str(node.get("_target_", node.get("_component_")))


class Code:
    """Where components' code comes from, and whether code outside elasticml, torch and
    torchmetrics may be imported at all."""

    def __init__(self, folder: str | Path | None = None, trusted_only: bool = False,
                 refusal: str = "") -> None:
        self.folder = Path(folder) if folder else None
        self.trusted_only, self.refusal = trusted_only, refusal

    @contextlib.contextmanager
    def search_path(self):
        """`sys.path` with the recipe's folder first and the current directory left out."""
        saved = list(sys.path)
        named = {_resolved(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p}
        cwd = _resolved(os.getcwd())
        kept = [p for p in saved if _resolved(p or ".") != cwd or cwd in named]
        sys.path[:] = ([str(self.folder)] if self.folder else []) + kept
        try:
            yield
        finally:
            sys.path[:] = saved

    def locate(self, dotted: str, key: str):
        """The object `dotted` names: the longest importable module prefix, then attributes."""
        parts = dotted.split(".")
        if not dotted or not all(part.isidentifier() for part in parts):
            raise UserError(f"{key}: '{dotted}' is not a dotted path like package.module.Name")
        if self.trusted_only and not _trusted_name(dotted):
            raise UserError(f"{key}: {dotted} {self.refusal}")
        module, found, error = None, 0, None
        with self.search_path():
            for cut in range(len(parts), 0, -1):
                name = ".".join(parts[:cut])
                try:
                    module, found = importlib.import_module(name), cut
                    break
                except ModuleNotFoundError as err:
                    if err.name is None or not name.startswith(err.name):
                        error = err  # the module exists but imports something missing
                        break
                except Exception as err:  # noqa: BLE001 - the user's module failed to import
                    error = err
                    break
        if module is None or error is not None:
            raise UserError(f"{key}: cannot import {dotted}: {self._why(error, parts[0])}")
        obj = module
        for attribute in parts[found:]:
            if not hasattr(obj, attribute):
                raise UserError(f"{key}: {'.'.join(parts[:found])} has no '{attribute}'")
            obj = getattr(obj, attribute)
        if self.trusted_only and not _own(dotted) and not inspect.isclass(obj):
            raise UserError(f"{key}: {dotted} {self.refusal}")
        return obj

    def _why(self, error: BaseException | None, top: str) -> str:
        if error is None or (isinstance(error, ModuleNotFoundError) and error.name == top):
            where = f"the recipe's folder ({self.folder}), " if self.folder else ""
            return (f"no module '{top}' in {where}PYTHONPATH or the installed packages "
                    "(put it beside the recipe or add its folder to PYTHONPATH)")
        return f"{type(error).__name__}: {error}{_origin(error)}"


def instantiate(config: Any, *args: Any, key: str, code: Code | None = None, **kwargs: Any):
    """Build the component `config` describes; `args`/`kwargs` come from the call site."""
    code = code or Code()
    node = _plain(config)
    if not is_component(node):
        raise UserError(f"{key}: needs a _target_ (e.g. {{_target_: package.module.Name}})")
    return _build(node, key, code, args, kwargs)


def check(config: Any, key: str, code: Code, runtime_args: int = 0, kind: type | None = None,
          what: str = "") -> None:
    """Without building anything: every target imports, takes the arguments it is given and,
    when it is a class, is a `kind`. `runtime_args` are the arguments the call site adds."""
    node = _plain(config)
    if not is_component(node):
        raise UserError(f"{key}: needs a _target_ (e.g. {{_target_: package.module.Name}})")
    target = code.locate(target_of(node), f"{key}._target_")
    kwargs = {k: v for k, v in node.items() if k not in RESERVED}
    for name, value in kwargs.items():
        _check_nested(value, f"{key}.{name}", code)
    if kind is not None and inspect.isclass(target) and not issubclass(target, kind):
        raise UserError(f"{key}._target_: {target_of(node)} is not {what or kind.__name__}")
    positional = [None] * runtime_args + list(node.get("_args_") or [])
    _bind(target, positional, kwargs, key, partial=bool(node.get("_partial_")))


def _check_nested(value: Any, key: str, code: Code) -> None:
    if is_component(value):
        check(value, key, code)
    elif isinstance(value, Mapping):
        for name, item in value.items():
            _check_nested(item, f"{key}.{name}", code)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_nested(item, f"{key}[{index}]", code)


def _build(node: Mapping, key: str, code: Code, args: Sequence, extra: Mapping):
    target = code.locate(target_of(node), f"{key}._target_")
    kwargs = {name: _value(value, f"{key}.{name}", code) for name, value in node.items()
              if name not in RESERVED}
    kwargs.update(extra)
    positional = [*args, *(_value(v, f"{key}._args_[{i}]", code)
                           for i, v in enumerate(node.get("_args_") or []))]
    partial = bool(node.get("_partial_"))
    _bind(target, positional, kwargs, key, partial)
    if partial:
        return functools.partial(target, *positional, **kwargs)
    try:
        return target(*positional, **kwargs)
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - the user's constructor failed: one line
        raise UserError(f"{key}: {target_of(node)}(...) failed: {type(err).__name__}: "
                        f"{err}{_origin(err)}") from None


def _value(value: Any, key: str, code: Code):
    if is_component(value):
        return _build(value, key, code, (), {})
    if isinstance(value, Mapping):
        return {name: _value(item, f"{key}.{name}", code) for name, item in value.items()}
    if isinstance(value, list | tuple):
        return [_value(item, f"{key}[{index}]", code) for index, item in enumerate(value)]
    if isinstance(value, str) and code.folder and value and not os.path.isabs(value):
        candidate = code.folder / value
        if candidate.exists():
            return str(candidate.resolve())
    return value


def _bind(target, positional: list, kwargs: dict, key: str, partial: bool) -> None:
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):  # a builtin without a signature: let the call decide
        return
    name = getattr(target, "__qualname__", str(target))
    takes = ", ".join(p for p in signature.parameters if p != "self") or "no arguments"
    params = signature.parameters.values()
    if not any(p.kind is p.VAR_KEYWORD for p in params):
        unknown = [k for k in kwargs if k not in signature.parameters]
        if unknown:  # the likely typo, said before any missing argument
            raise UserError(f"{key}: {name} takes no argument '{unknown[0]}' (it takes: "
                            f"{takes})")
    try:
        (signature.bind_partial if partial else signature.bind)(*positional, **kwargs)
    except TypeError as err:
        raise UserError(f"{key}: {name} {err} (it takes: {takes})") from None


def _plain(config: Any) -> Any:
    """OmegaConf nodes -> plain dicts and lists (interpolations resolved)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(config, DictConfig | ListConfig):
        return OmegaConf.to_container(config, resolve=True)
    return config


def _own(dotted: str) -> bool:
    return any(dotted.startswith(prefix + ".") for prefix in TRUSTED_MODULES)


def _trusted_name(dotted: str) -> bool:
    return _own(dotted) or dotted.split(".")[0] in TRUSTED_CLASSES


def _resolved(path: str) -> str:
    try:
        return str(Path(path).resolve())
    except OSError:
        return path


def _origin(error: BaseException) -> str:
    """` (at file:line)` of the innermost frame, so a one-line error still says where."""
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return ""
    last = frames[-1]
    return f" (at {last.filename}:{last.lineno})"
