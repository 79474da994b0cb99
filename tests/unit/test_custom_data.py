"""A table of numbers as data (`task.name: custom`): CSV and NPZ files and the errors they cause."""

import numpy as np
import pytest

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


def test_a_relative_data_path_is_relative_to_the_recipe_folder(tmp_path, monkeypatch):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "t.csv").write_text("\n".join(f"{i},{i % 2}" for i in range(30)))
    (folder / "r.yaml").write_text("task: {name: custom, path: t.csv}\nmodel: {name: mlp}\n"
                                   "trainer: {max_steps: 1}\n")
    monkeypatch.chdir(tmp_path)  # not the recipe's folder
    recipe = load_recipe(folder / "r.yaml")
    assert recipe.run.recipe_dir == str(folder)
    assert build_task(recipe).classes == 2
    (folder / "r.yaml").write_text("task: {name: custom, path: nowhere.csv}\n"
                                   "trainer: {max_steps: 1}\n")
    with pytest.raises(UserError, match=r"task.path: data file not found: .*project/nowhere"):
        load_recipe(folder / "r.yaml")
