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


def elasticml(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "elasticml", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=240)


def train_and_eval(tmp_path: Path, recipe: str, *overrides: str, split: str = "test") -> tuple:
    run_id = Path(recipe).stem
    done = elasticml("train", recipe, *overrides, "--run-dir", str(tmp_path), "--run-id", run_id,
                     "-q")
    assert done.returncode == 0, done.stdout + done.stderr
    run = tmp_path / run_id
    final = json.loads((run / "reports" / "final.json").read_text())
    scored = elasticml("eval", str(run), "--json", "--split", split)
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


@pytest.mark.parametrize("recipe", ["recipes/custom/spirals.yaml",
                                    "recipes/custom/spirals-csv.yaml"])
def test_bring_your_own(tmp_path, recipe):
    _, final, metrics = train_and_eval(tmp_path, recipe, "trainer.max_steps=250",
                                       "trainer.eval_every=0", "trainer.checkpoint_every=0")
    assert metrics["accuracy"] >= 0.85
    assert close(metrics["accuracy"], final["test"]["accuracy"])
