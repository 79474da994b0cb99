"""Your own table: classification over a CSV or NPZ file (`task.name: custom`).

`task.path` (relative to the recipe's folder) is a CSV file (a header row is optional; the
label is the last column, or the column named by `task.label`) or an NPZ file with arrays `x`
[N, features...] and `y` [N]. It is cut into train/val/test by `val_fraction` /
`test_fraction` and the seed. Labels may be numbers or strings; the sorted distinct labels
become classes 0..C-1 (the order of per-class metrics and of the confusion matrix).

Your own Dataset classes, model and loss are components instead (`tasks/own.py`).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from elasticml.errors import UserError
from elasticml.recipe.checks import recipe_path
from elasticml.tasks.classification import SPLITS, ClassificationTask, split_indices


def build(recipe) -> ClassificationTask:
    config = recipe.task
    tables = _cut(*read_table(recipe_path(recipe, config.path), config.label), config,
                  recipe.run.seed)
    labels, classes = encode_labels([tables[s][1] for s in SPLITS])
    data = {s: (tables[s][0], y) for s, y in zip(SPLITS, labels, strict=True)}
    return ClassificationTask("custom", data, classes, recipe)


def read_table(path: Path, label: str | None) -> tuple[torch.Tensor, np.ndarray]:
    """Features and raw labels of a CSV or NPZ file."""
    if path.suffix.lower() == ".npz":
        return _read_npz(path)
    return _read_csv(path, label)


def encode_labels(parts: list) -> tuple[list[torch.Tensor], int]:
    """Raw labels of several splits -> class ids 0..C-1 over their sorted distinct values."""
    arrays = [np.asarray(part).reshape(-1) for part in parts]
    names = np.unique(np.concatenate(arrays))
    if len(names) < 2:
        raise UserError(f"task: the labels hold {len(names)} distinct value(s); "
                        "classification needs at least 2")
    return [torch.from_numpy(np.searchsorted(names, a).astype(np.int64)) for a in arrays], \
        len(names)


def _cut(x, y, config, seed: int) -> dict:
    x, y = _features(x, "task"), np.asarray(y).reshape(-1)
    if len(x) != len(y):
        raise UserError(f"task: {len(x)} feature rows but {len(y)} labels")
    parts = split_indices(len(x), config.val_fraction, config.test_fraction, seed)
    return {s: (x[rows], y[rows.numpy()]) for s, rows in zip(SPLITS, parts, strict=True)}


def _features(x, where: str) -> torch.Tensor:
    try:
        tensor = torch.as_tensor(np.asarray(x, dtype=np.float32))
    except (TypeError, ValueError) as err:
        raise UserError(f"{where}: features are not numbers ({err})") from None
    if tensor.ndim == 1:
        tensor = tensor[:, None]
    if not torch.isfinite(tensor).all():
        raise UserError(f"{where}: features hold NaN or infinite values")
    return tensor.reshape(len(tensor), -1)


def _read_npz(path: Path):
    try:
        with np.load(path, allow_pickle=False) as arrays:
            if "x" not in arrays or "y" not in arrays:
                raise UserError(f"{path}: an NPZ file needs arrays 'x' and 'y', found "
                                f"{', '.join(arrays.files) or 'none'}")
            return _features(arrays["x"], str(path)), arrays["y"]
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: not a readable NPZ file ({err})") from None


def _read_csv(path: Path, label: str | None):
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = [row for row in csv.reader(handle) if row]
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not a UTF-8 text file (byte {err.start})") from None
    if not rows:
        raise UserError(f"{path}: the file is empty")
    header = None if all(_is_number(cell) for cell in rows[0]) else rows[0]
    first_line = 2 if header else 1
    body = rows[1:] if header else rows
    if label is not None and (header is None or label not in header):
        raise UserError(f"task.label: no column '{label}' in {path}"
                        + ("" if header else " (it has no header row)"))
    column = header.index(label) if label is not None else len(rows[0]) - 1
    features, labels = [], []
    for line, row in enumerate(body, start=first_line):
        if len(row) != len(rows[0]):
            raise UserError(f"{path}:{line}: {len(row)} columns, expected {len(rows[0])}")
        cells = [cell for index, cell in enumerate(row) if index != column]
        for index, cell in enumerate(cells):
            if not _is_number(cell):
                name = [h for i, h in enumerate(header or []) if i != column]
                where = f"column '{name[index]}'" if name else f"column {index + 1}"
                raise UserError(f"{path}:{line}: {where}: '{cell}' is not a number")
        features.append([float(cell) for cell in cells])
        labels.append(row[column].strip())
    values = np.array(labels)
    if all(_is_number(v) for v in labels):
        values = values.astype(np.float64)
    return _features(features, str(path)), values


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
