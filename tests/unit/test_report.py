"""`elasticml report` on synthetic run dirs: counts, causes, JSON, text, HTML, comparisons."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from elasticml.cli import app
from elasticml.report import report, runs_table, summarise
from elasticml.rundir import RunDir
from tests.synth import SynthRun, crash_and_join_run

runner = CliRunner()


def test_crash_and_join_are_counted_from_events(tmp_path):
    run = crash_and_join_run(tmp_path)
    s = summarise(RunDir(run.path))
    assert s.status == "succeeded" and s.steps == 100 and s.total_steps == 100
    assert s.restarts == 2
    assert [f["cause"] for f in s.failures] == ["injected fault: kill at step 30 (SIGKILL)"]
    assert s.failures[0]["rank"] == 1 and s.failures[0]["step"] == 30
    assert s.failures[0]["others"][0]["rank"] == 0  # its peer died of the lost connection
    assert [(m["change"], m["world_size"]) for m in s.membership] == [("start", 2), ("join", 4)]
    assert s.joins == 1 and s.leaves == 0
    assert [r["cause"] for r in s.recoveries] == ["failure", "membership"]
    assert s.downtime_s == pytest.approx(3.2 + 2.8, abs=0.01)
    assert s.steps_lost == 0
    assert set(s.samples_per_s_by_world_size) == {2, 4}
    assert s.samples_per_s == pytest.approx(64 / 0.05, rel=0.01)
    assert s.metrics["test"]["accuracy"] == 0.97 and s.best["value"] == 0.98


def test_a_node_leaving_and_the_rank_exception_as_cause(tmp_path):
    run = SynthRun(tmp_path, "leave").launch("1:2").generation(nodes=2).train(10)
    run.crash(rank=2, injected=False, error="ValueError: bad batch",
              traceback="Traceback ...\n  File \"task.py\", line 3\nValueError: bad batch")
    run.generation(nodes=1, steps_lost=3).train(5)
    s = summarise(RunDir(run.finish().path))
    assert s.failures[0]["rank"] == 2 and s.failures[0]["cause"] == "ValueError: bad batch"
    assert "ValueError" in s.failures[0]["traceback"]
    assert [m["change"] for m in s.membership] == ["start", "leave"] and s.leaves == 1
    assert s.steps_lost == 3


def test_the_root_cause_wins_whatever_order_the_agent_reports_ranks(tmp_path):
    run = SynthRun(tmp_path, "order").launch().generation().train(5)
    run.agent_event("worker_failed", rank=0, exitcode=1, signal=None,
                    error="RuntimeError: Connection closed by peer", traceback=None)
    run.agent_event("worker_failed", rank=1, exitcode=1, signal=None,
                    error="ZeroDivisionError: division by zero", traceback=None)
    run.agent_event("restart", cause="failure", restart_count=1)
    s = summarise(RunDir(run.close().path))
    assert len(s.failures) == 1
    assert s.failures[0]["rank"] == 1 and s.failures[0]["cause"].startswith("ZeroDivision")


def test_json_has_the_documented_fields(tmp_path):
    crash_and_join_run(tmp_path)
    result = runner.invoke(app, ["report", "story", "--run-dir", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    for key in ("run_id", "status", "steps", "restarts", "failures", "membership",
                "downtime_s", "steps_lost", "samples_per_s", "metrics"):
        assert key in body
    assert body["run_id"] == "story" and len(body["failures"]) == 1
    assert body["failures"][0]["cause"]
    assert [m["world_size"] for m in body["membership"]] == [2, 4]
    assert all({"time", "world_size"} <= set(m) for m in body["membership"])


def test_text_report_names_what_happened(tmp_path):
    crash_and_join_run(tmp_path)
    result = runner.invoke(app, ["report", "--run-dir", str(tmp_path)])  # latest run
    assert result.exit_code == 0, result.output
    text = result.output
    assert "run story · succeeded" in text
    assert "restarts    2 (1 failure, 1 join, 0 leaves)" in text
    assert "rank 1 on vm: injected fault: kill at step 30 (SIGKILL)" in text
    assert "join   world size 4 (2 nodes)" in text
    assert "test   loss 0.1000  accuracy 0.9700" in text


def test_html_is_self_contained_with_marked_plots(tmp_path):
    crash_and_join_run(tmp_path)
    page = tmp_path / "r.html"
    result = runner.invoke(app, ["report", str(tmp_path / "story"), "--html", str(page)])
    assert result.exit_code == 0, result.output
    html = page.read_text()
    assert html.count("<svg") == 3
    assert "failure at step 30: rank 1" in html and "join: world size 2 -&gt; 4" in html
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "")
    assert "<script" not in html


def test_two_runs_side_by_side(tmp_path):
    crash_and_join_run(tmp_path, "a")
    SynthRun(tmp_path, "b").launch().generation().train(50).finish()
    text = report(["a", "b"], str(tmp_path))
    header, *rows = text.splitlines()
    assert header.split() == ["a", "b"]
    assert any(r.split() == ["restarts", "2", "0"] for r in rows)
    assert any(r.split() == ["joins", "1", "0"] for r in rows)
    both = json.loads(report(["a", "b"], str(tmp_path), as_json=True))
    assert [b["run_id"] for b in both] == ["a", "b"]


def test_runs_lists_every_run_newest_first(tmp_path):
    import os

    crash_and_join_run(tmp_path, "old")
    SynthRun(tmp_path, "new").launch().generation().train(5).close()
    (tmp_path / "not-a-run").mkdir()
    for path in (tmp_path / "old" / "events").iterdir():
        os.utime(path, (1, 1))
    result = runner.invoke(app, ["runs", "--run-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:4] == ["run", "status", "steps", "best"]
    assert [line.split()[0] for line in lines[1:]] == ["new", "old"]
    assert "accuracy 0.9800" in lines[2]
    listed = json.loads(runs_table(str(tmp_path), as_json=True))
    assert [r["status"] for r in listed] == ["interrupted", "succeeded"]
    assert runner.invoke(app, ["report", "--list", "--run-dir", str(tmp_path)]).output == \
        result.output
