"""TensorBoard as one more reader of the event stream.

The launcher tails the run's events and writes scalars into `<run>/tensorboard/`: train loss,
lr, samples/s and world size from step events, every validation metric from eval events,
restarts and failures on the step axis. A step already written (by an earlier launch of the
same run) is never written again, so one run stays one TensorBoard run across restarts.
"""

from __future__ import annotations

from pathlib import Path

from elasticml.telemetry.events import Event, read_events


class TensorBoardSink:
    def __init__(self, folder: str | Path, events_dir: str | Path | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder))
        self.written: dict[str, int] = {}
        self.step = 0
        self.restarts = 0
        if events_dir is not None:  # what earlier launches of this run already wrote
            for event in read_events(events_dir):
                self._fold(event, write=False)

    def feed(self, events: list[Event]) -> None:
        for event in events:
            self._fold(event, write=True)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()

    def _fold(self, event: Event, write: bool) -> None:
        kind = event["kind"]
        if kind == "step" and event.get("rank", 0) == 0:
            self.step = event["step"]
            for tag, key in (("train/loss", "loss"), ("train/lr", "lr"),
                             ("train/samples_per_s", "samples_per_s"),
                             ("train/world_size", "world_size")):
                if event.get(key) is not None:
                    self._scalar(tag, event[key], event["step"], write, event["t"])
        elif kind == "eval" and event.get("rank", 0) == 0:
            for name, value in event["metrics"].items():
                if isinstance(value, int | float):
                    self._scalar(f"{event['split']}/{name}", value, event["step"], write,
                                 event["t"])
        elif kind == "restart":
            self.restarts = max(self.restarts, event.get("restart_count", 0))
            self._scalar("elastic/restarts", self.restarts, self.step, write, event["t"])
        elif kind == "rendezvous":
            self._scalar("elastic/world_size", event["world_size"], self.step, write, event["t"])

    def _scalar(self, tag: str, value: float, step: int, write: bool, wall: float) -> None:
        if step <= self.written.get(tag, -1) and not tag.startswith("elastic/"):
            return
        self.written[tag] = step
        if write:
            self.writer.add_scalar(tag, value, step, walltime=wall)
