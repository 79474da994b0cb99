"""Find and call the user's own code named in a recipe as `module:function` or `file.py:function`.

`module` is imported like `python -m` would: from the current directory or `PYTHONPATH`.
`file.py` is a path, relative to the directory elasticml runs in, like `task.path`. This module
imports nothing heavy, so recipe checks can tell early that the code cannot be found.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from pathlib import Path

from elasticml.errors import UserError


def problem(spec: str) -> str | None:
    """Why `spec` cannot name a function, without running the user's module; None if it can."""
    module, sep, function = spec.partition(":")
    if not sep or not module or not function.isidentifier():
        return f"'{spec}' is not module:function or file.py:function"
    if module.endswith(".py"):
        return None if Path(module).expanduser().is_file() else f"file not found: {module}"
    _with_cwd_on_path()
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        found = None
    if found is None:
        return (f"module '{module}' not found (run from its folder or add that folder to "
                "PYTHONPATH, or name a file: path/to/file.py:function)")
    return None


def load(spec: str, key: str):
    """The function `spec` names; a `UserError` naming `key` when it cannot be had."""
    reason = problem(spec)
    if reason:
        raise UserError(f"{key}: {reason}")
    module_name, _, function = spec.partition(":")
    if module_name.endswith(".py"):
        module = _load_file(Path(module_name).expanduser().resolve())
    else:
        module = importlib.import_module(module_name)
    found = getattr(module, function, None)
    if not callable(found):
        raise UserError(f"{key}: '{module_name}' has no function '{function}'")
    return found


def _with_cwd_on_path() -> None:
    """What `python -m` does; the `elasticml` console script would otherwise miss it."""
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())


def _load_file(path: Path):
    name = f"elasticml_user_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def model_from_factory(config, info: dict):
    """The user's model: `model.factory(info, **model.options)`, checked to be a Module."""
    from torch import nn

    model = load(config.factory, "model.factory")(info, **config.options)
    if not isinstance(model, nn.Module):
        raise UserError(f"model.factory: {config.factory} returned {type(model).__name__}, "
                        "not a torch.nn.Module")
    return model
