"""TensorBoard event files, read back with TensorBoard's own reader."""

from __future__ import annotations

from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from elasticml.telemetry.events import read_events
from elasticml.telemetry.tensorboard import TensorBoardSink, recipe_hparams
from tests.synth import SynthRun, crash_and_join_run

RECIPE = "run:\n  name: story\noptimizer:\n  name: adamw\n  lr: 0.003\nmodel:\n  channels: [8]\n"


def load(folder: Path) -> EventAccumulator:
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def steps(acc: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, round(e.value, 4)) for e in acc.Scalars(tag)]


def test_scalars_markers_recipe_and_hparams(tmp_path):
    run = crash_and_join_run(tmp_path)
    events = read_events(run.path / "events")
    sink = TensorBoardSink(run.path / "tensorboard", recipe_yaml=RECIPE)
    sink.feed(events[:150])
    sink.feed(events[150:])
    sink.close()
    acc = load(run.path / "tensorboard")
    scalars = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/samples_per_s", "train/world_size",
            "val/accuracy", "val/loss", "test/accuracy", "elastic/restarts",
            "elastic/failures", "elastic/world_size", "elastic/downtime_s",
            "elastic/steps_lost"} <= scalars
    assert [s for s, _ in steps(acc, "train/loss")] == list(range(1, 101))
    assert steps(acc, "elastic/failures") == [(30, 1.0)]
    assert [v for _, v in steps(acc, "elastic/restarts")] == [1.0, 2.0]
    assert steps(acc, "elastic/world_size") == [(0, 2.0), (60, 4.0)]
    assert [s for s, _ in steps(acc, "elastic/downtime_s")] == [30, 60]
    timeline = [(e.step, e.tensor_proto.string_val[0].decode())
                for e in acc.Tensors("elastic/timeline/text_summary")]
    assert (30, "failure at step 30: rank 1: injected fault: kill at step 30 (SIGKILL)") \
        in timeline
    assert any(step == 60 and text.startswith("join: world size 2 -> 4")
               for step, text in timeline)
    recipe = acc.Tensors("recipe/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "lr: 0.003" in recipe
    assert "hparams" in acc.PluginTagToContent("hparams") or acc.PluginTagToContent("hparams")
    assert steps(acc, "hparam/test/accuracy") == [(100, 0.97)]


def test_a_second_launch_continues_the_run_without_duplicates(tmp_path):
    run = SynthRun(tmp_path, "twice").launch().generation().train(30, log_every=5)
    first = TensorBoardSink(run.path / "tensorboard", None, RECIPE)
    first.feed(read_events(run.path / "events"))
    first.close()
    # the second `elasticml train` of the run: its sink starts by replaying the history
    history = len(read_events(run.path / "events"))
    second = TensorBoardSink(run.path / "tensorboard", run.path / "events", RECIPE)
    run.wait(10).launch().generation(steps_lost=5)
    run.step = 25  # resumed from an older checkpoint: steps 26..30 are trained again
    run.train(25, log_every=5).finish()
    second.feed(read_events(run.path / "events")[history:])
    second.close()
    acc = load(run.path / "tensorboard")
    logged = [s for s, _ in steps(acc, "train/loss")]
    assert logged == list(range(5, 51, 5))  # step 30 not written twice
    assert len(acc.Tensors("recipe/text_summary")) == 1
    assert steps(acc, "elastic/steps_lost") == [(30, 5.0)]  # marked where the run stopped


def test_recipe_hparams_are_flat_scalars():
    flat = recipe_hparams(RECIPE)
    assert flat["optimizer.lr"] == 0.003 and flat["model.channels"] == "[8]"
