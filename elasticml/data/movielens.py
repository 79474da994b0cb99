"""MovieLens-100k ratings, read from the file that ships inside the `recbole` wheel.

The data set's licence forbids redistribution, so elasticml never copies it: it reads
`recbole/dataset_example/ml-100k/ml-100k.inter` from the installed package (found without
importing recbole, whose own dependencies need not be installed: `pip install --no-deps
recbole`), or any file in the same format named by the recipe. Format: a header line
(`user_id:token	item_id:token	rating:float	timestamp:float`), then one tab-separated rating
per line.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from elasticml.errors import UserError

INSIDE_RECBOLE = Path("dataset_example/ml-100k/ml-100k.inter")
INSTALL = "pip install --no-deps recbole"


@dataclass
class Ratings:
    """One row per rating; users and items as dense ids 0..n-1 (first-seen order sorted)."""

    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray
    times: np.ndarray
    user_names: np.ndarray
    item_names: np.ndarray


def bundled_file() -> Path:
    """The `.inter` file inside the installed recbole package; a `UserError` saying how to
    install it when it is not there."""
    spec = importlib.util.find_spec("recbole")
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            path = Path(folder) / INSIDE_RECBOLE
            if path.is_file():
                return path
    raise UserError(f"task: MovieLens-100k ships inside the recbole wheel: `{INSTALL}` (or set "
                    "task.path to an ml-100k .inter file)")


def read_ratings(path: Path) -> Ratings:
    """Every rating of an `.inter` file; a `UserError` naming the line of a bad row."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot be read as text ({err})") from None
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        cells = line.split("\t")
        if not line.strip():
            continue
        if len(cells) != 4:
            raise UserError(f"{path}:{number}: {len(cells)} columns, expected 4 (user, item, "
                            "rating, timestamp)")
        try:
            rows.append((cells[0], cells[1], float(cells[2]), float(cells[3])))
        except ValueError:
            raise UserError(f"{path}:{number}: rating and timestamp must be numbers") from None
    if not rows:
        raise UserError(f"{path}: no ratings")
    users, items, ratings, times = zip(*rows, strict=True)
    user_names, user_ids = np.unique(np.array(users), return_inverse=True)
    item_names, item_ids = np.unique(np.array(items), return_inverse=True)
    return Ratings(user_ids, item_ids, np.array(ratings), np.array(times), user_names, item_names)
