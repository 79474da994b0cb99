"""Users' own data and models: CSV and NPZ files, factories, and the errors they can cause."""

import numpy as np
import pytest
import torch

from elasticml.errors import UserError
from elasticml.recipe.load import load_recipe
from elasticml.tasks import build_task
from elasticml.tasks.custom import read_table


def custom(tmp_path, task: dict, model: dict | None = None):
    return load_recipe({"run": {"dir": str(tmp_path)}, "task": {"name": "custom", **task},
                        "model": model or {"name": "mlp"}, "trainer": {"max_steps": 1}})


def test_csv_with_header_and_string_labels(tmp_path):
    path = tmp_path / "t.csv"
    rows = [f"{i},{i % 3 * 1.5},{['b', 'a'][i % 2]},{i}" for i in range(40)]
    path.write_text("f1,f2,kind,f3\n" + "\n".join(rows) + "\n")
    task = build_task(custom(tmp_path, {"path": str(path), "label": "kind"}))
    assert task.classes == 2 and task.features == 3
    assert sum(len(s) for s in task.splits().values()) == 40
    x, y = read_table(path, "kind")
    assert x.shape == (40, 3) and set(y) == {"a", "b"}


def test_csv_without_header_takes_the_last_column(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("\n".join(f"{i},{-i},{i % 4}" for i in range(30)))
    task = build_task(custom(tmp_path, {"path": str(path)}))
    assert task.classes == 4 and task.features == 2


def test_csv_errors_name_the_line_and_column(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b,label\n1,2,x\n3,oops,y\n")
    with pytest.raises(UserError, match=r"t\.csv:3: column 'b': 'oops' is not a number"):
        read_table(path, "label")
    with pytest.raises(UserError, match="no column 'kind'"):
        read_table(path, "kind")


def test_npz_file(tmp_path):
    path = tmp_path / "t.npz"
    np.savez(path, x=np.random.default_rng(0).normal(size=(50, 2, 2)), y=np.arange(50) % 5)
    task = build_task(custom(tmp_path, {"path": str(path)}))
    assert task.classes == 5 and task.features == 4
    np.savez(tmp_path / "bad.npz", features=np.zeros(3))
    with pytest.raises(UserError, match="needs arrays 'x' and 'y'"):
        read_table(tmp_path / "bad.npz", None)


def test_factories_from_a_file_and_from_pythonpath(tmp_path, monkeypatch):
    code = tmp_path / "mine.py"
    code.write_text(
        "import torch\n"
        "def data(n=60):\n"
        "    x = torch.randn(n, 3)\n"
        "    return {s: (x, (x[:, 0] > 0).long()) for s in ('train', 'val', 'test')}\n"
        "def model(info, width=8):\n"
        "    return torch.nn.Linear(info['features'], info['classes'])\n")
    recipe = custom(tmp_path, {"factory": f"{code}:data", "options": {"n": 30}},
                    {"name": "custom", "factory": f"{code}:model"})
    task = build_task(recipe)
    assert len(task.splits()["val"]) == 30
    assert isinstance(task.build_model(), torch.nn.Linear)
    monkeypatch.syspath_prepend(str(tmp_path))
    task = build_task(custom(tmp_path, {"factory": "mine:data"}))
    assert task.classes == 2


def test_missing_user_code_is_a_recipe_error(tmp_path):
    with pytest.raises(UserError, match="task.factory: module 'nowhere_at_all' not found"):
        custom(tmp_path, {"factory": "nowhere_at_all:data"})
    with pytest.raises(UserError, match="task.factory: file not found"):
        custom(tmp_path, {"factory": "nowhere_at_all.py:data"})
    with pytest.raises(UserError, match="model.factory: 'x' is not module:function"):
        custom(tmp_path, {"path": __file__}, {"name": "custom", "factory": "x"})
