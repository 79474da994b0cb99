"""An early stop as the live console, TensorBoard and `elasticml report` tell it."""

from __future__ import annotations

import io
import json

from rich.console import Console

from elasticml.report import report, summarise
from elasticml.rundir import RunDir
from elasticml.telemetry.console import LiveConsole, Progress
from elasticml.telemetry.events import read_events
from elasticml.telemetry.tensorboard import TensorBoardSink
from tests.synth import stopped_early_run
from tests.unit.test_tensorboard import load, steps

MESSAGE = "stopped early at step 50: val accuracy did not improve by 0.01 for 3 evaluations"


def test_the_console_says_why_and_where_even_when_quiet(tmp_path):
    run = stopped_early_run(tmp_path)
    for quiet in (False, True):
        out, progress = io.StringIO(), Progress("patient")
        LiveConsole(progress, stream=out, quiet=quiet).feed(read_events(run.path / "events"))
        [line] = [x for x in out.getvalue().splitlines() if x.startswith("early_stop ")]
        assert line == f"early_stop step=50 best_step=20 best_value=0.95 message='{MESSAGE}'"
        assert progress.early_stopping == MESSAGE


def test_the_panel_counts_validations_without_improvement(tmp_path):
    events = read_events(stopped_early_run(tmp_path).path / "events")
    progress = Progress("patient")
    for event in events:
        progress.fold(event)
        if event["kind"] == "eval" and event.get("step") == 40:
            break
    assert progress.early_stopping == ("2 / 3 validations without improvement (best accuracy "
                                       "0.9500 at step 20)")
    shown = io.StringIO()
    Console(file=shown, width=120).print(LiveConsole(progress, stream=io.StringIO()).render())
    assert "early stopping  2 / 3 validations without improvement" in shown.getvalue()


def test_tensorboard_plots_the_count_and_writes_the_reason(tmp_path):
    run = stopped_early_run(tmp_path)
    sink = TensorBoardSink(run.path / "tensorboard")
    sink.feed(read_events(run.path / "events"))
    sink.close()
    acc = load(run.path / "tensorboard")
    assert steps(acc, "early_stopping/stale") == [(10, 0.0), (20, 0.0), (30, 1.0), (40, 2.0),
                                                   (50, 3.0)]
    [text] = acc.Tensors("early_stopping/text_summary")
    assert text.step == 50 and text.tensor_proto.string_val[0].decode() == MESSAGE


def test_the_report_names_the_stop_and_the_model_scored(tmp_path):
    run = stopped_early_run(tmp_path)
    summary = summarise(RunDir(run.path))
    assert summary.status == "succeeded" and summary.steps == 50
    assert summary.stopped_early["message"] == MESSAGE and summary.weights_step == 20
    text = report([str(run.path)], None)
    assert f"ended       {MESSAGE}; final metrics of best.pt (step 20)" in text
    body = json.loads(report([str(run.path)], None, as_json=True))
    assert body["stopped_early"]["best_step"] == 20 and body["weights_step"] == 20
