"""TensorBoard as one more reader of the event stream: `<run>/tensorboard/` is one run.

The launcher's follower thread feeds the sink every new event. It writes:

* `train/loss`, `train/lr`, `train/samples_per_s`, `train/world_size`, `train/epoch` from step
  events; `<split>/<metric>` for every metric of every eval event (val during training,
  test and train at the end);
* `elastic/restarts`, `elastic/failures`, `elastic/world_size` (at each membership change),
  `elastic/downtime_s` and `elastic/steps_lost` (at each recovery) on the *step* axis, plus a
  text entry `elastic/timeline` per failure, recovery and membership change saying what
  happened, so a dip in the loss curve can be matched to its cause;
* `early_stopping/stale` (validations in a row without improvement) at every counted
  validation, and a text entry `early_stopping` saying why and where training stopped early;
* the resolved recipe as text (`recipe`) and, when training is done, hparams (the recipe's
  scalar fields) with the final metrics, so runs can be compared in the HParams tab.

A second `elasticml train` of the same run appends to the same folder: the sink first replays
the run's earlier events without writing, so a step already written is never written again
(a step logged again after a resume is skipped) and markers are not repeated.
"""

from __future__ import annotations

from pathlib import Path

from elasticml.telemetry.events import Event, read_events
from elasticml.telemetry.incidents import Change, Failure, Incidents, Recovery

STEP_TAGS = (("train/loss", "loss"), ("train/lr", "lr"), ("train/samples_per_s", "samples_per_s"),
             ("train/world_size", "world_size"), ("train/epoch", "epoch"))


class TensorBoardSink:
    def __init__(self, folder: str | Path, events_dir: str | Path | None = None,
                 recipe_yaml: str | None = None, history: list[Event] | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder))
        self.written: dict[str, int] = {}
        self.incidents = Incidents()
        self.recipe_yaml = recipe_yaml
        self.finished = False
        if history is None:
            history = read_events(events_dir) if events_dir is not None else []
        for event in history:
            self._fold(event, write=False)
        if recipe_yaml and not any(e["kind"] == "launch" for e in history):
            self.writer.add_text("recipe", _code(recipe_yaml), 0)

    def feed(self, events: list[Event]) -> None:
        for event in events:
            self._fold(event, write=True)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()

    # --- folding -----------------------------------------------------------------------

    def _fold(self, event: Event, write: bool) -> None:
        kind = event["kind"]
        records = self.incidents.fold(event)
        if kind == "step":
            for tag, key in STEP_TAGS:
                value = event.get(key)
                if isinstance(value, int | float):
                    self._scalar(tag, value, event["step"], write, event["t"])
        elif kind == "eval" and event.get("rank", 0) == 0:
            for name, value in (event.get("metrics") or {}).items():
                if isinstance(value, int | float):
                    self._scalar(f"{event['split']}/{name}", value, event["step"], write,
                                 event["t"])
            count = event.get("early_stopping")
            if isinstance(count, dict) and isinstance(count.get("stale"), int):
                self._scalar("early_stopping/stale", count["stale"], event["step"], write,
                             event["t"])
        elif kind == "early_stop" and write:
            self.writer.add_text("early_stopping", str(event.get("message")), event["step"],
                                 walltime=event["t"])
        elif kind == "restart" and write:
            self._marker("elastic/restarts", self.incidents.restarts, event["t"])
        elif kind == "done" and not self.finished:
            self.finished = True
            if write:
                self._hparams(event.get("metrics") or {})
        for record in records:
            if write:
                self._record(record, event["t"])

    def _record(self, record: Failure | Recovery | Change, wall: float) -> None:
        step = self.incidents.step
        if isinstance(record, Failure):
            self._marker("elastic/failures", len(self.incidents.failures), wall)
            text = f"failure at step {record.step}: rank {record.rank}: {record.cause}"
        elif isinstance(record, Recovery):
            if record.downtime_s is not None:
                self._marker("elastic/downtime_s", record.downtime_s, wall)
            self._marker("elastic/steps_lost", record.steps_lost or 0, wall)
            text = (f"resumed at step {record.resumed_step} after {record.cause} "
                    f"({record.downtime_s or 0:.1f} s down, {record.steps_lost or 0} steps lost)")
        else:
            self._marker("elastic/world_size", record.world_size, wall)
            text = (f"{record.kind}: world size {record.previous or '-'} -> "
                    f"{record.world_size} ({record.nodes} nodes)")
        self.writer.add_text("elastic/timeline", text, step, walltime=wall)

    def _scalar(self, tag: str, value: float, step: int, write: bool, wall: float) -> None:
        if step <= self.written.get(tag, -1):
            return  # written by an earlier attempt or launch of this run
        self.written[tag] = step
        if write:
            self.writer.add_scalar(tag, value, step, walltime=wall)

    def _marker(self, tag: str, value: float, wall: float) -> None:
        self.writer.add_scalar(tag, value, self.incidents.step, walltime=wall)

    def _hparams(self, metrics: dict) -> None:
        from torch.utils.tensorboard.summary import hparams

        final = {f"hparam/{split}/{name}": float(value)
                 for split, values in metrics.items() if isinstance(values, dict)
                 for name, value in values.items() if isinstance(value, int | float)}
        final["hparam/restarts"] = float(self.incidents.restarts)
        final["hparam/downtime_s"] = float(self.incidents.downtime_s)
        exp, ssi, sei = hparams(recipe_hparams(self.recipe_yaml), final)
        for summary in (exp, ssi, sei):
            self.writer.file_writer.add_summary(summary)
        for tag, value in final.items():
            self.writer.add_scalar(tag, value, self.incidents.step)


def recipe_hparams(recipe_yaml: str | None) -> dict:
    """The recipe's scalar fields, flattened (`optimizer.lr`), as TensorBoard hparams."""
    if not recipe_yaml:
        return {}
    import yaml

    flat: dict = {}

    def walk(node, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        elif isinstance(node, bool | int | float | str):
            flat[prefix[:-1]] = node
        elif isinstance(node, list):
            flat[prefix[:-1]] = str(node)

    walk(yaml.safe_load(recipe_yaml) or {}, "")
    return {k: v for k, v in flat.items() if not k.startswith(("faults.", "run.description"))}


def _code(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())
