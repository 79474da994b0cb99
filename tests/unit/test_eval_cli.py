"""`elasticml eval` through the CLI: JSON contract, run directories, and every bad input."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from elasticml.cli import app
from elasticml.recipe.load import load_recipe, recipe_to_dict
from elasticml.tasks import build_task
from elasticml.train.checkpoint import encode

ROOT = Path(__file__).resolve().parents[2]


def make_run(tmp_path: Path, steps=(5,), task: dict | None = None) -> Path:
    """A run directory with checkpoints of a tiny digits MLP (no training needed)."""
    recipe = load_recipe({"run": {"dir": str(tmp_path), "name": "tiny"},
                          "model": {"name": "mlp", "hidden": [16]},
                          "trainer": {"max_steps": 10}})
    torch.manual_seed(0)
    model = build_task(recipe).build_model()
    run = tmp_path / "tiny"
    (run / "checkpoints").mkdir(parents=True)
    (run / "recipe.yaml").write_text("run: {name: tiny}\n")
    stored = recipe_to_dict(recipe)
    stored["task"] = task or stored["task"]
    for step in steps:
        state = {"step": step, "model": model.state_dict(), "recipe": stored, "best": None}
        (run / "checkpoints" / f"step-{step}.pt").write_bytes(encode(state))
    return run


def invoke(*args):
    return CliRunner().invoke(app, ["eval", *map(str, args)])


def test_json_output_is_exactly_the_result(tmp_path):
    run = make_run(tmp_path)
    result = invoke(run / "checkpoints" / "step-5.pt", "--json", "--split", "val")
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert list(body) == ["checkpoint", "step", "split", "metrics"]
    assert body["step"] == 5 and body["split"] == "val"
    expected = {"accuracy", "macro_f1", "precision", "recall", "confusion_matrix"}
    assert expected <= set(body["metrics"])
    assert sum(map(sum, body["metrics"]["confusion_matrix"])) == 270  # the whole val split
    saved = json.loads((run / "reports" / "eval-val-step5.json").read_text())
    assert saved == body
    assert any((run / "tensorboard").iterdir())


def test_run_dir_uses_the_newest_good_checkpoint(tmp_path):
    run = make_run(tmp_path, steps=(5, 10))
    (run / "checkpoints" / "step-10.pt").write_bytes(b"half a file")
    result = invoke(run, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["step"] == 5
    assert "step-5.pt" in result.stderr and "skipping" in result.stderr


def test_table_output(tmp_path):
    result = invoke(make_run(tmp_path), "--split", "test")
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.stdout and "confusion matrix" in result.stdout


def bad_inputs(tmp_path: Path) -> dict:
    run = make_run(tmp_path)
    good = run / "checkpoints" / "step-5.pt"
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:-100])
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    empty = tmp_path / "empty-run"
    (empty / "checkpoints").mkdir(parents=True)
    unknown = make_run(tmp_path / "u", task={"name": "astrology"}) / "checkpoints" / "step-5.pt"
    return {
        "missing": ([tmp_path / "nope.pt"], "checkpoint not found"),
        "truncated": ([truncated], "truncated"),
        "foreign": ([foreign], "not an elasticml checkpoint"),
        "no checkpoints": ([empty], "no readable checkpoint"),
        "unknown task": ([unknown], "unknown task 'astrology'"),
        "model override": ([good, "model.hidden=[32]"], "model cannot be changed"),
        "bad split": ([good, "--split", "dev"], "--split: 'dev'"),
        "bad override": ([good, "task.val_fraction=2"], "task.val_fraction"),
    }


@pytest.mark.parametrize("case", ["missing", "truncated", "foreign", "no checkpoints",
                                  "unknown task", "model override", "bad split",
                                  "bad override"])
def test_bad_input_is_one_line_and_exit_2(tmp_path, case):
    args, message = bad_inputs(tmp_path)[case]
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert result.stdout == ""


def test_help_and_rejecting_a_bad_file_do_not_import_torch(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"x" * 200)
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from elasticml.cli import app\n"
        "codes = [CliRunner().invoke(app, a).exit_code for a in "
        f"(['eval', '--help'], ['eval', {str(bad)!r}], ['eval', {str(tmp_path / 'no')!r}])]\n"
        "print(codes, 'torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, env={"PYTHONPATH": str(ROOT)}, check=True).stdout
    assert out.strip() == "[0, 2, 2] False"


def own_checkpoint(tmp_path: Path, module: str) -> Path:
    """A checkpoint whose recipe names a model from `module` (trained from `tmp_path/code`)."""
    code = tmp_path / "code"
    code.mkdir(exist_ok=True)
    stored = {"run": {"name": "own", "recipe_dir": str(code)},
              "data": {s: {"_target_": "torch.utils.data.ConcatDataset",
                           "datasets": [[1, 2, 3]]} for s in ("train", "val", "test")},
              "model": {"_target_": module},
              "loss": {"_target_": "torch.nn.CrossEntropyLoss"},
              "trainer": {"max_steps": 1}}
    path = tmp_path / "own.pt"
    path.write_bytes(encode({"step": 1, "model": {}, "recipe": stored, "best": None}))
    return path


def test_a_checkpoint_naming_foreign_code_is_refused_without_importing_it(tmp_path,
                                                                           monkeypatch):
    marker = tmp_path / "imported"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\nNet = None\n")
    result = invoke(own_checkpoint(tmp_path, "evil.Net"), "--json")
    assert result.exit_code == 2 and result.stdout == ""
    assert result.output.count("\n") == 1
    assert "(model._target_: evil.Net)" in result.output and "--trust-code" in result.output
    assert not marker.exists()
    # with the flag: imported from the folder it was trained from, never the current one
    result = invoke(own_checkpoint(tmp_path, "evil.Net"), "--json", "--trust-code")
    assert result.exit_code == 2 and "cannot import evil.Net" in result.output
    assert not marker.exists()
