"""The command line: fast help, one-line errors with exit status 2, dry runs that start nothing."""

import subprocess
import sys

from typer.testing import CliRunner

from elasticml.cli import app
from tests.helpers import this_checkout_env

runner = CliRunner()


def test_help_lists_the_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("train", "recipes"):
        assert command in result.output


def test_dry_run_prints_plan_and_starts_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["train", "digits", "--dry-run", "--nnodes", "1:2",
                                 "--rdzv-endpoint", "127.0.0.1:29555", "trainer.max_steps=5"])
    assert result.exit_code == 0, result.output
    assert "max_steps: 5" in result.output
    assert "torchrun --nnodes=1:2" in result.output
    assert not (tmp_path / "runs").exists()


def test_dry_run_does_not_import_torch():
    code = ("import sys\nfrom elasticml.cli import main\nsys.argv=['elasticml','train','digits',"
            "'--dry-run']\ntry:\n    main()\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def bad(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "elasticml", *args], capture_output=True,
                          text=True, env=this_checkout_env())


def test_bad_input_is_one_line_exit_2_no_traceback():
    for args, expected in [
        (("train", "missing.yaml"), "recipe file not found"),
        (("train", "digits", "trainer.bogus=1"), "trainer.bogus: unknown key"),
        (("train", "digits", "--nnodes", "2:1"), "elastic.nnodes"),
        (("train", "digits", "--nnodes", "1:2"), "needs a rendezvous endpoint"),
        (("train", "digits", "--rdzv-backend", "zk"), "elastic.rdzv.backend: 'zk'"),
        (("train", "byo/spirals", "model.widht=3"), "model: SpiralNet takes no argument 'widht'"),
        (("train", "byo/spirals", "data.val._target_=spirals_script.Nope", "--dry-run"),
         "data.val._target_: spirals_script has no 'Nope'"),
        (("recipes", "keys", "NO_SUCH_SECTION"), "no recipe section 'NO_SUCH_SECTION'"),
    ]:
        result = bad(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert expected in result.stderr
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_bad_row_in_a_data_file_is_one_line_before_anything_starts(tmp_path):
    (tmp_path / "t.csv").write_text("a,b,label\n1,2,x\n3,oops,y\n")
    (tmp_path / "r.yaml").write_text("task: {name: custom, path: t.csv}\nmodel: {name: mlp}\n"
                                     "trainer: {max_steps: 5}\n")
    result = bad("train", str(tmp_path / "r.yaml"), "--run-dir", str(tmp_path / "runs"))
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().endswith("t.csv:3: column 'b': 'oops' is not a number")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "runs").exists()


def test_a_recipe_that_is_not_text_is_one_line(tmp_path):
    (tmp_path / "r.yaml").write_bytes(b"run: {name: \xff\xfe}\n")
    result = bad("train", str(tmp_path / "r.yaml"))
    assert result.returncode == 2 and "not a UTF-8 text file" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_recipes_lists_and_shows():
    listed = runner.invoke(app, ["recipes"])
    assert listed.exit_code == 0 and "digits" in listed.output
    shown = runner.invoke(app, ["recipes", "show", "digits"])
    assert shown.exit_code == 0 and "task:" in shown.output


def test_recipe_reference_is_generated_from_the_schema():
    from pathlib import Path

    from elasticml.recipe.reference import markdown

    docs = Path(__file__).resolve().parents[2] / "docs" / "recipe-reference.md"
    assert docs.read_text() == markdown(), "run: python scripts/recipe_reference.py"
    keys = runner.invoke(app, ["recipes", "keys", "trainer"], env={"COLUMNS": "250"})
    assert keys.exit_code == 0 and "trainer.global_batch_size" in keys.output
