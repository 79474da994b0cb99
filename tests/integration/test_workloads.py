"""Each bundled recipe, shortened: train it with the real CLI, evaluate the checkpoint, check a
quality threshold, and check that eval reproduces the numbers training reported.

The short versions keep the whole file to about two minutes on a 2-core CPU; the full recipes
reach the qualities stated at their top (see docs/workloads.md).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def elasticml(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "elasticml", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=240)


def train_and_eval(tmp_path: Path, recipe: str, *overrides: str, split: str = "test",
                   eval_flags: tuple[str, ...] = ()) -> tuple:
    run_id = Path(recipe).stem
    done = elasticml("train", recipe, *overrides, "--run-dir", str(tmp_path), "--run-id", run_id,
                     "-q")
    assert done.returncode == 0, done.stdout + done.stderr
    run = tmp_path / run_id
    final = json.loads((run / "reports" / "final.json").read_text())
    scored = elasticml("eval", str(run), "--json", "--split", split, *eval_flags)
    assert scored.returncode == 0, scored.stderr
    result = json.loads(scored.stdout)
    assert result["step"] == final["step"] and result["split"] == split
    return run, final, result["metrics"]


def close(a: float, b: float) -> bool:
    return abs(a - b) < 1e-4


def test_digits_two_workers(tmp_path):
    run, final, metrics = train_and_eval(tmp_path, "recipes/digits.yaml",
                                         "trainer.max_steps=300")
    assert metrics["accuracy"] >= 0.95
    assert close(metrics["accuracy"], final["test"]["accuracy"])
    assert final["best"]["metric"] == "accuracy" and (run / "checkpoints" / "best.pt").is_file()
    # two workers scored val in shards during training: the counts still cover the split once
    assert sum(map(sum, final["val"]["confusion_matrix"])) == 270
    parallel = elasticml("eval", str(run), "--json", "--nproc", "2")
    assert parallel.returncode == 0, parallel.stderr
    assert json.loads(parallel.stdout)["metrics"]["confusion_matrix"] == \
        metrics["confusion_matrix"]


def test_recsys_beats_popularity(tmp_path):
    _, final, metrics = train_and_eval(tmp_path, "recipes/recsys.yaml", "trainer.epochs=2",
                                       "trainer.eval_every=0", "trainer.checkpoint_every=0")
    assert metrics["ndcg@10"] >= 0.25
    assert metrics["ndcg@10"] >= 2.5 * metrics["popular_ndcg@10"]
    assert close(metrics["ndcg@10"], final["test"]["ndcg@10"])


def test_sequence_learns_the_rule(tmp_path):
    _, final, metrics = train_and_eval(
        tmp_path, "recipes/sequence.yaml", "task.vocab=64", "task.length=32",
        "task.samples=3000", "model.dim=64", "trainer.max_steps=150", "trainer.eval_every=0",
        "trainer.checkpoint_every=0")
    assert metrics["rule_accuracy"] >= 0.8
    assert close(metrics["accuracy"], final["test"]["accuracy"])


def test_a_csv_file(tmp_path):
    _, final, metrics = train_and_eval(tmp_path, "recipes/custom/spirals-csv.yaml",
                                       "trainer.max_steps=250", "trainer.eval_every=0",
                                       "trainer.checkpoint_every=0")
    assert metrics["accuracy"] >= 0.85
    assert close(metrics["accuracy"], final["test"]["accuracy"])


def test_the_worked_example_a_plain_scripts_classes_end_to_end(tmp_path):
    """Trained from another folder; eval imports the script only when told, and then from
    the recipe's folder, not from the current directory."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    marker = tmp_path / "decoy-imported"
    (elsewhere / "spirals_script.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    recipe = str(ROOT / "recipes" / "byo" / "spirals.yaml")
    done = elasticml("train", recipe, "trainer.max_steps=250", "trainer.eval_every=100",
                     "--run-dir", str(tmp_path / "runs"), "-q", cwd=elsewhere)
    assert done.returncode == 0, done.stdout + done.stderr
    run = tmp_path / "runs" / "spirals"
    final = json.loads((run / "reports" / "final.json").read_text())
    assert final["test"]["accuracy"] >= 0.9 and final["best"]["metric"] == "accuracy"

    refused = elasticml("eval", str(run), "--json", cwd=elsewhere)
    assert refused.returncode == 2 and refused.stdout == ""
    [line] = [x for x in refused.stderr.splitlines() if x.startswith("error:")]
    assert "spirals_script.SpiralNet" in line and "--trust-code" in line
    assert not marker.exists()

    scored = elasticml("eval", str(run), "--json", "--trust-code", cwd=elsewhere)
    assert scored.returncode == 0, scored.stderr
    assert close(json.loads(scored.stdout)["metrics"]["accuracy"], final["test"]["accuracy"])
    assert not marker.exists(), "the current directory's module was not imported"
    parallel = elasticml("eval", str(run), "--json", "--trust-code", "--nproc", "2",
                         cwd=elsewhere)
    assert parallel.returncode == 0, parallel.stderr
    assert close(json.loads(parallel.stdout)["metrics"]["accuracy"], final["test"]["accuracy"])
    report = elasticml("report", str(run), "--json")
    assert report.returncode == 0 and json.loads(report.stdout)["metrics"]


def test_fashion_mnist_from_disk_with_loader_workers(tmp_path, fashion_mnist):
    _, final, metrics = train_and_eval(
        tmp_path, "recipes/fashion-mnist.yaml", "trainer.epochs=null", "trainer.max_steps=120",
        "trainer.eval_every=0", "trainer.checkpoint_every=0", "data.val.val_size=1000")
    assert metrics["accuracy"] >= 0.78
    assert close(metrics["accuracy"], final["test"]["accuracy"])
    assert sum(map(sum, metrics["confusion_matrix"])) == 10000


def test_movielens_beats_the_most_popular_list(tmp_path, movielens):
    _, final, metrics = train_and_eval(tmp_path, "recipes/movielens.yaml", "trainer.epochs=4",
                                       "trainer.eval_every=0", "trainer.checkpoint_every=0")
    assert metrics["ndcg@10"] >= 1.3 * metrics["popular_ndcg@10"]
    assert metrics["recall@10"] >= 1.3 * metrics["popular_recall@10"]
    assert close(metrics["ndcg@10"], final["test"]["ndcg@10"])
