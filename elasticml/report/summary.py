"""`RunSummary`: everything `elasticml report` says about one run, computed from its run dir.

The events are the source of truth (see `telemetry/events.py`); `reports/final.json` and
`recipe.yaml` add the final metrics and the recipe when they exist. Any part may be missing —
a run still in progress, a run killed mid-line, a copied run dir without checkpoints — and the
summary then says what it can and leaves the rest empty rather than failing.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from elasticml.report.reading import Generation, read_run_events
from elasticml.rundir import RunDir
from elasticml.telemetry.incidents import Incidents, as_int, rounded

PLOT_POINTS = 1000


@dataclass
class RunSummary:
    run_id: str
    path: str
    status: str
    """succeeded | failed | stopped | running | interrupted | empty"""
    recipe: dict
    started: float | None
    ended: float | None
    steps: int
    total_steps: int | None
    samples: int | None
    samples_per_s: float | None
    """Mean training throughput: samples over time spent stepping (downtime excluded)."""
    effective_samples_per_s: float | None
    """Samples over wall time from the first to the last step (downtime included)."""
    samples_per_s_by_world_size: dict[int, float]
    restarts: int
    failures: list[dict]
    recoveries: list[dict]
    membership: list[dict]
    downtime_s: float
    steps_lost: int
    checkpoints: list[dict]
    metrics: dict[str, dict]
    best: dict | None
    stopped_early: dict | None
    """{step, message, metric, best_value, best_step, ...} when early stopping ended the run;
    its final metrics are then those of the model of `weights_step` (`best.pt`)."""
    weights_step: int | None
    """Step of the model the final (test) metrics were scored with."""
    warnings: list[str]
    series: dict[str, list] = field(default_factory=dict)
    """Plot data: loss/throughput [(seconds, step, value)], world [(seconds, size)]."""

    @property
    def duration_s(self) -> float | None:
        if self.started is None or self.ended is None:
            return None
        return self.ended - self.started

    @property
    def joins(self) -> int:
        return sum(1 for m in self.membership if m["change"] == "join")

    @property
    def leaves(self) -> int:
        return sum(1 for m in self.membership if m["change"] == "leave")

    def to_json(self) -> dict:
        body = {k: v for k, v in self.__dict__.items() if k != "series"}
        body["samples_per_s_by_world_size"] = {
            str(k): v for k, v in self.samples_per_s_by_world_size.items()}
        body.update(duration_s=rounded(self.duration_s), joins=self.joins, leaves=self.leaves)
        return body


def summarise(run: RunDir) -> RunSummary:
    read = read_run_events(run.events)
    incidents = Incidents()
    for event in read.events:
        incidents.fold(event)
    events = read.events
    started = events[0]["t"] if events else None
    status = _status(events)
    ended = time.time() if status == "running" else (events[-1]["t"] if events else None)
    final = _json(run.reports / "final.json")
    steps = [e for e in events if e["kind"] == "step"]
    last_step = max([incidents.step, *(as_int(e.get("step")) for e in events
                                       if e["kind"] in ("done", "checkpoint", "eval"))])
    if isinstance(final, dict):
        last_step = max(last_step, as_int(final.get("step")))
    rate, by_world = _throughput(read.generations)
    return RunSummary(
        run_id=_run_id(run, events),
        path=str(run.path),
        status=status,
        recipe=_recipe(run, events),
        started=started,
        ended=ended,
        steps=last_step,
        total_steps=next((e.get("total_steps") for e in reversed(steps)), None),
        samples=next((e.get("samples") for e in reversed(steps)), None),
        samples_per_s=rate,
        effective_samples_per_s=_effective(steps),
        samples_per_s_by_world_size=by_world,
        restarts=incidents.restarts,
        failures=[_relative(f.to_dict(), started) for f in incidents.failures],
        recoveries=[_relative(r.to_dict(), started) for r in incidents.recoveries],
        membership=[{"time": rounded(c.t - started), "t": c.t, "world_size": c.world_size,
                     "previous": c.previous, "nodes": c.nodes, "change": c.kind, "step": c.step}
                    for c in incidents.changes],
        downtime_s=round(incidents.downtime_s, 3),
        steps_lost=incidents.steps_lost,
        checkpoints=[{"time": rounded(e["t"] - started), "step": e.get("step"),
                      "reason": e.get("reason"), "rank": e.get("rank"),
                      "seconds": e.get("seconds"), "path": e.get("path")}
                     for e in events if e["kind"] == "checkpoint"],
        metrics=_metrics(final, events),
        best=final.get("best") if isinstance(final, dict) else None,
        stopped_early=_stopped_early(final, events),
        weights_step=_weights_step(final, events),
        warnings=[str(e.get("message")) for e in events if e["kind"] == "warning"],
        series=_series(steps, incidents, started),
    )


def _stopped_early(final, events: list) -> dict | None:
    """The early stop of the run's last launch: its `early_stop` event (or final.json's)."""
    launches = [i for i, e in enumerate(events) if e["kind"] == "launch"]
    current = events[launches[-1]:] if launches else events
    said = next((e for e in reversed(current) if e["kind"] == "early_stop"), None)
    if said is not None:
        keys = ("step", "message", "metric", "mode", "min_delta", "patience", "best_value",
                "best_step")
        return {k: said.get(k) for k in keys}
    stopped = final.get("stopped_early") if isinstance(final, dict) else None
    return {**stopped, "step": final.get("step")} if isinstance(stopped, dict) else None


def _weights_step(final, events: list) -> int | None:
    if isinstance(final, dict) and isinstance(final.get("weights_step"), int):
        return final["weights_step"]
    done = [e for e in events if e["kind"] == "done" and isinstance(e.get("weights_step"), int)]
    return done[-1]["weights_step"] if done else None


def _status(events: list) -> str:
    if not events:
        return "empty"
    launches = [i for i, e in enumerate(events) if e["kind"] == "launch"]
    current = events[launches[-1]:] if launches else events
    done = [e for e in current if e["kind"] == "agent_done"]
    if any(e.get("status") == "failed" for e in done):
        return "failed"
    if any(e.get("status") == "succeeded" for e in done):
        return "succeeded"
    if done:
        last = done[-1].get("status")
        if last == "not_needed":  # a spare: the job finished while it waited
            return "not needed"
        return "stopped" if last == "stopped" else "failed"
    if any(e["kind"] == "done" for e in current):
        return "succeeded"
    return "running" if _agents_alive(current) else "interrupted"


def _agents_alive(events: list) -> bool:
    """An agent on this host with a live pid, or one on another host heard from lately."""
    host = socket.gethostname()
    agents = {(e.get("node"), e.get("pid")) for e in events if e.get("role") == "agent"}
    for node, pid in agents:
        if node == host and isinstance(pid, int):
            try:
                os.kill(pid, 0)
                return True
            except PermissionError:
                return True
            except OSError:
                continue
        elif node != host and time.time() - events[-1]["t"] < 120:
            return True
    return False


def _throughput(generations: list[Generation]) -> tuple[float | None, dict[int, float]]:
    """Samples per second while stepping: exact per worker process (one world size each)."""
    totals: dict[int, list[float]] = {}
    for gen in generations:
        first, last = gen.first, gen.last
        size = last.get("world_size")
        samples = _num(last.get("samples")) - _num(first.get("samples"))
        seconds = last["t"] - first["t"]
        if samples <= 0 or seconds <= 0:
            rate = _num(last.get("samples_per_s"))
            samples, seconds = (rate, 1.0) if rate > 0 else (0.0, 0.0)
        acc = totals.setdefault(size, [0.0, 0.0])
        acc[0] += samples
        acc[1] += seconds
    by_world = {size: round(s / t, 1) for size, (s, t) in sorted(
        totals.items(), key=lambda kv: (kv[0] is None, kv[0] or 0)) if t > 0 and size is not None}
    samples = sum(s for s, _ in totals.values())
    seconds = sum(t for _, t in totals.values())
    return (round(samples / seconds, 1) if seconds > 0 else None), by_world


def _effective(steps: list) -> float | None:
    if len(steps) < 2:
        return None
    first, last = steps[0], steps[-1]
    samples = _num(last.get("samples")) - _num(first.get("samples"))
    seconds = last["t"] - first["t"]
    return round(samples / seconds, 1) if samples > 0 and seconds > 0 else None


def _series(steps: list, incidents: Incidents, started: float | None) -> dict[str, list]:
    if started is None:
        return {"loss": [], "throughput": [], "world": []}
    stride = max(1, len(steps) // PLOT_POINTS)
    points = steps[::stride]
    if steps and points[-1] is not steps[-1]:
        points.append(steps[-1])
    loss = [(rounded(e["t"] - started), e.get("step"), e["loss"]) for e in points
            if isinstance(e.get("loss"), int | float)]
    rate = [(rounded(e["t"] - started), e.get("step"), e["samples_per_s"]) for e in points
            if isinstance(e.get("samples_per_s"), int | float)]
    world = [(rounded(c.t - started), c.world_size) for c in incidents.changes]
    return {"loss": loss, "throughput": rate, "world": world}


def _metrics(final, events: list) -> dict[str, dict]:
    metrics: dict[str, dict] = {}
    for event in events:
        if event["kind"] == "eval" and isinstance(event.get("metrics"), dict):
            metrics[str(event.get("split"))] = _scalars(event["metrics"])
    if isinstance(final, dict):
        for split in ("val", "test", "train"):
            if isinstance(final.get(split), dict):
                metrics[split] = _scalars(final[split])
    return metrics


def _recipe(run: RunDir, events: list) -> dict:
    """The handful of recipe fields a reader wants first; the whole recipe is in the run dir."""
    text = _read(run.recipe)
    data = {}
    if text:
        import yaml

        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError:
            data = {}
    if not isinstance(data, dict):
        data = {}

    def get(*keys):
        node = data
        for key in keys:
            node = node.get(key) if isinstance(node, dict) else None
        return node

    launch = next((e for e in events if e["kind"] == "launch"), {})
    def named(section: str, *inner: str):
        """A section's `name`, or its component's `_target_` (your own model, data...)."""
        return get(section, *inner, "name") or get(section, *inner, "_target_") or \
            get(section, *inner, "_component_")

    summary = {
        "name": get("run", "name"), "task": named("task") or named("data", "train"),
        "model": named("model"), "optimizer": named("optimizer"), "lr": get("optimizer", "lr"),
        "schedule": named("schedule"), "max_steps": get("trainer", "max_steps"),
        "global_batch_size": get("trainer", "global_batch_size"),
        "nnodes": launch.get("nnodes") or get("elastic", "nnodes"),
        "nproc_per_node": get("elastic", "nproc_per_node") or launch.get("nproc_per_node"),
        "max_restarts": get("elastic", "max_restarts"),
        "rdzv_backend": launch.get("backend"),
    }
    return {k: v for k, v in summary.items() if v not in (None, "")}


def _run_id(run: RunDir, events: list) -> str:
    return next((str(e["run_id"]) for e in events if e["kind"] == "launch" and e.get("run_id")),
                run.run_id)


def _relative(record: dict, started: float | None) -> dict:
    record["time"] = rounded(record["t"] - started) if started is not None else None
    if record.get("resumed_t") is not None and started is not None:
        record["resumed_time"] = rounded(record["resumed_t"] - started)
    return record


def _scalars(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, int | float)
            and not isinstance(v, bool)}


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return ""


def _json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def _num(value) -> float:
    return float(value) if isinstance(value, int | float) else 0.0
