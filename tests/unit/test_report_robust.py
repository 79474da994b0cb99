"""Partial, damaged, huge and wrong inputs: a correct partial report or one clear error."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from elasticml.errors import UserError
from elasticml.report import report, summarise
from elasticml.report.locate import resolve_run
from elasticml.rundir import RunDir
from tests.helpers import this_checkout_env
from tests.synth import SynthRun


def test_a_run_in_progress_is_running_with_what_is_known(tmp_path):
    run = SynthRun(tmp_path, "live").launch().generation().train(40)
    run.agent[2] = os.getpid()  # the "agent" is this live process
    run.agent_event("rendezvous", round=9, world_size=2, group_world_size=1)
    s = summarise(RunDir(run.path))
    assert s.status == "running" and s.steps == 40 and s.metrics == {}
    assert "running" in report([str(run.path)], None)


def test_last_line_cut_by_sigkill_is_skipped(tmp_path):
    run = SynthRun(tmp_path, "cut").launch().generation().train(12)
    run.close()
    worker = sorted((run.path / "events").glob("worker-*"))[0]
    with worker.open("a") as handle:
        handle.write('{"t": 1700000099.0, "kind": "step", "step": 13, "lo')
    s = summarise(RunDir(run.path))
    assert s.steps == 12 and s.status == "interrupted"


def test_missing_parts_give_a_partial_report(tmp_path):
    only_recipe = tmp_path / "bare"
    only_recipe.mkdir()
    (only_recipe / "recipe.yaml").write_text("task:\n  name: digits\n")
    s = summarise(RunDir(only_recipe))
    assert s.status == "empty" and s.steps == 0 and s.recipe == {"task": "digits"}
    text = report([str(only_recipe)], None)
    assert "run bare · empty" in text
    garbage = tmp_path / "garbage"
    (garbage / "events").mkdir(parents=True)
    (garbage / "events" / "agent-x-1.jsonl").write_bytes(b"\x00\xff not json\n[1, 2]\n")
    (garbage / "recipe.yaml").write_text("{{{: not yaml")
    assert summarise(RunDir(garbage)).status == "empty"


def test_not_a_run_is_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="no run 'nowhere': not a directory"):
        resolve_run("nowhere", str(tmp_path))
    with pytest.raises(UserError, match="is not an elasticml run"):
        resolve_run(str(tmp_path), None)


def test_cli_error_is_one_line_exit_2(tmp_path):
    for args in (["report", str(tmp_path / "missing")], ["report", "--run-dir", str(tmp_path)],
                 ["report", str(tmp_path)]):
        result = subprocess.run([sys.executable, "-m", "elasticml", *args], capture_output=True,
                                text=True, cwd=tmp_path, env=this_checkout_env())
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_report_on_a_100k_step_run(tmp_path):
    """Correctness on a long log; its latency is measured by scripts/bench_perf.py."""
    run = SynthRun(tmp_path, "long", total_steps=100_000).launch().generation()
    run.train(40_000).checkpoint().crash(rank=1)
    run.generation().train(60_000).finish()
    size = sum(p.stat().st_size for p in (run.path / "events").iterdir())
    assert size > 25_000_000  # a realistic log: every step logged
    assert summarise(RunDir(run.path)).steps == 100_000
    result = subprocess.run([sys.executable, "-m", "elasticml", "report", str(run.path),
                             "--json"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["steps"] == 100_000 and body["restarts"] == 1 and len(body["failures"]) == 1
    assert body["samples_per_s"] == pytest.approx(1280, rel=0.01)
    assert "torch" not in result.stderr


def test_report_does_not_import_torch(tmp_path):
    run = SynthRun(tmp_path, "light").launch().generation().train(5).finish()
    code = ("import sys\nfrom elasticml.cli import main\n"
            f"sys.argv = ['elasticml', 'report', {str(run.path)!r}, '--html', "
            f"{str(tmp_path / 'r.html')!r}]\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
