"""The bundled recipes, each with the one-line description from its `run.description`."""

from __future__ import annotations

from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from elasticml.recipe.load import recipe_dirs


def bundled() -> dict[str, Path]:
    """Recipe name (file stem) -> file; top-level recipes first, then subfolders."""
    found: dict[str, Path] = {}
    for root in recipe_dirs():
        paths = root.glob("**/*.yaml")
        for path in sorted(paths, key=lambda p: (len(p.relative_to(root).parts), str(p))):
            found.setdefault(path.stem, path)
    return found


def description(path: Path) -> str:
    try:
        data = yaml.safe_load(path.read_text()) or {}
        return str((data.get("run") or {}).get("description") or "")
    except (OSError, yaml.YAMLError, AttributeError):
        return "(unreadable)"


def print_catalogue() -> None:
    table = Table("recipe", "description", box=None)
    for name, path in bundled().items():
        table.add_row(name, description(path))
    Console().print(table)
