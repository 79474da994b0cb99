"""The recipe reference, read from the schema itself: every key, its type, default and doc.

`elasticml recipes keys` prints it and `docs/recipe-reference.md` is generated from it
(`python scripts/recipe_reference.py`), so the documentation cannot drift from the code.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
from dataclasses import dataclass

from elasticml.recipe import schema


@dataclass(frozen=True)
class Key:
    key: str
    type: str
    default: str
    doc: str


def _field_docs(cls: type) -> dict[str, str]:
    """Docstrings written under each field (the torchtitan convention)."""
    body = ast.parse(inspect.getsource(cls)).body[0].body
    docs = {}
    for stmt, following in zip(body, body[1:] + [None], strict=True):
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            is_doc = (isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                      and isinstance(following.value.value, str))
            docs[stmt.target.id] = " ".join(following.value.value.split()) if is_doc else ""
    return docs


def _default(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        return repr(field.default) if field.default is not None else "null"
    if field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
        return "" if dataclasses.is_dataclass(value) else repr(value)
    return ""


def keys_of(cls: type, prefix: str) -> list[Key]:
    docs, found = _field_docs(cls), []
    for field in dataclasses.fields(cls):
        name = f"{prefix}.{field.name}"
        value = field.default_factory() if field.default_factory is not dataclasses.MISSING \
            else None
        if dataclasses.is_dataclass(value):
            found += keys_of(type(value), name)
            continue
        kind = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", "")
        found.append(Key(name, kind, _default(field), docs.get(field.name, "")))
    return found


COMPONENTS = ("model", "loss", "metrics", "optimizer", "schedule")
"""Sections that may be `_target_` components (listed once more under `components`)."""


def sections() -> dict[str, list[Key]]:
    """Every section with its keys; `task` and `model` once per variant."""
    result: dict[str, list[Key]] = {}
    docs = _field_docs(schema.Recipe)
    components = [Key(name, "component", "", docs.get(name, "")) for name in COMPONENTS]
    for field in dataclasses.fields(schema.Recipe):
        if field.name == "task":
            for name, cls in schema.TASKS.items():
                result[f"task (name: {name})"] = keys_of(cls, "task")
        elif field.name == "model":
            for name, cls in schema.MODELS.items():
                result[f"model (name: {name})"] = keys_of(cls, "model")
        elif field.name in ("loss", "metrics"):
            continue
        else:
            result[field.name] = keys_of(type(field.default_factory()), field.name)
    result["components (_target_)"] = components
    return result


def markdown() -> str:
    lines = ["# Recipe reference", "",
             "Generated from `elasticml/recipe/schema.py` by `python scripts/recipe_reference.py`;"
             " `elasticml recipes keys` prints the same.", ""]
    for title, keys in sections().items():
        lines += [f"## {title}", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        for k in keys:
            doc, kind = k.doc.replace("|", "\\|"), k.type.replace("|", "\\|")
            lines.append(f"| `{k.key}` | {kind} | `{k.default}` | {doc} |")
        lines.append("")
    return "\n".join(lines)
