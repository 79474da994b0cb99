"""Live progress on the launching terminal, read from the run's events.

On a terminal: a rich panel redrawn a few times a second (step / total, epoch, loss,
samples/s, ETA, world size and members, restarts, last checkpoint, latest failure or
membership change). Not on a terminal (CI, `nohup`, a pipe): one plain `key=value` line per
event worth logging, so a log file can be grepped and parsed.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

from rich.console import Console
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from elasticml.telemetry.events import Event

NOTABLE = {"warning", "rendezvous", "restart", "worker_failed", "hang", "resume", "checkpoint",
           "eval", "error", "done", "agent_done", "fault"}


@dataclass
class Progress:
    """What the live view shows, folded from events."""

    run_id: str
    node: str = ""
    step: int = 0
    total: int | None = None
    epoch: float = 0.0
    loss: float | None = None
    lr: float | None = None
    samples_per_s: float | None = None
    world_size: int | None = None
    members: int | None = None
    restarts: int = 0
    last_checkpoint: str = "-"
    last_change: str = "-"
    last_failure: str = "-"
    val: dict = field(default_factory=dict)
    started: float = field(default_factory=time.time)
    rate_steps: list[tuple[float, int]] = field(default_factory=list)

    def fold(self, event: Event) -> None:
        kind = event["kind"]
        if kind == "step":
            self.step, self.total = event["step"], event.get("total_steps", self.total)
            self.epoch, self.loss, self.lr = event.get("epoch", 0.0), event["loss"], event["lr"]
            self.samples_per_s = event.get("samples_per_s")
            self.world_size = event.get("world_size", self.world_size)
            self.rate_steps = [*self.rate_steps[-20:], (event["t"], event["step"])]
        elif kind == "rendezvous":
            before, self.world_size = self.world_size, event["world_size"]
            self.members = event["group_world_size"]
            if before is not None and before != self.world_size:
                self.last_change = f"world size {before} -> {self.world_size}"
        elif kind == "restart":
            self.restarts = max(self.restarts, event.get("restart_count", 0))
            if event["cause"] == "membership":
                self.last_change = "membership changed: regrouping"
        elif kind == "worker_failed":
            self.last_failure = f"rank {event['rank']}: {event.get('error')}"
        elif kind == "hang":
            self.last_failure = f"rank {event.get('rank')} hung for {event.get('seconds')} s"
        elif kind == "checkpoint":
            self.last_checkpoint = f"step {event['step']} ({event.get('reason')})"
        elif kind == "eval" and event.get("split") == "val":
            self.val = {k: v for k, v in event["metrics"].items() if isinstance(v, float | int)}
        elif kind == "resume":
            self.step = max(self.step, event.get("step") or 0)

    def eta_s(self) -> float | None:
        if len(self.rate_steps) < 2 or not self.total:
            return None
        (t0, s0), (t1, s1) = self.rate_steps[0], self.rate_steps[-1]
        if s1 <= s0:
            return None
        return (self.total - self.step) * (t1 - t0) / (s1 - s0)


def plain_line(event: Event) -> str | None:
    """One parseable line for an event, or None when it is not worth a line."""
    kind = event["kind"]
    if kind == "step":
        return (f"step={event['step']}/{event.get('total_steps', '?')} "
                f"epoch={event.get('epoch', 0):.2f} loss={event['loss']:.4f} "
                f"lr={event['lr']:.3g} samples_per_s={event.get('samples_per_s', 0):.0f} "
                f"world_size={event.get('world_size')}")
    if kind not in NOTABLE or (kind in ("resume", "done") and event.get("rank", 0) != 0):
        return None
    fields = {k: v for k, v in event.items()
              if k not in ("t", "kind", "role", "pid", "traceback", "command", "pids", "node",
                           "local_rank", "restart_count", "shares")}
    if kind == "eval":
        fields["metrics"] = {k: round(v, 4) for k, v in event["metrics"].items()
                             if isinstance(v, float | int)}
    text = " ".join(f"{k}={_compact(v)}" for k, v in fields.items() if v is not None)
    return f"{kind} {text}"


def _compact(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ",".join(f"{k}:{_compact(v)}" for k, v in value.items())
    return str(value).replace(" ", "_") if isinstance(value, str) and len(value) < 40 else \
        repr(value)


class LiveConsole:
    """Shows events as they arrive; `feed()` is called from the launcher's polling thread."""

    def __init__(self, progress: Progress, quiet: bool = False, verbose: bool = False,
                 stream=None) -> None:
        self.progress, self.quiet, self.verbose = progress, quiet, verbose
        self.stream = stream or sys.stdout
        self.console = Console(file=self.stream)
        self.live: Live | None = None
        if self.stream.isatty() and not quiet:
            self.live = Live(self.render(), console=self.console, refresh_per_second=4,
                             transient=False)

    def __enter__(self) -> LiveConsole:
        if self.live:
            self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.live:
            self.live.update(self.render())
            self.live.__exit__(*exc)

    def feed(self, events: list[Event]) -> None:
        for event in events:
            self.progress.fold(event)
            if self.live:
                if event["kind"] in ("worker_failed", "restart", "error", "hang") or (
                        self.verbose and event["kind"] in NOTABLE):
                    self.live.console.print(f"[yellow]{plain_line(event)}[/]")
                continue
            line = plain_line(event)
            important = event["kind"] in ("worker_failed", "restart", "error", "agent_done",
                                          "hang", "done")
            if line and (not self.quiet or important):
                print(line, file=self.stream, flush=True)
        if self.live:
            self.live.update(self.render())

    def render(self) -> Panel:
        p = self.progress
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold cyan")
        table.add_column()
        total = f"{p.step} / {p.total}" if p.total else str(p.step)
        eta = p.eta_s()
        table.add_row("step", f"{total}   epoch {p.epoch:.2f}")
        table.add_row("loss", f"{p.loss:.4f}" if p.loss is not None else "-")
        table.add_row("samples/s", f"{p.samples_per_s:,.0f}" if p.samples_per_s else "-")
        table.add_row("ETA", f"{eta:,.0f} s" if eta is not None else "-")
        table.add_row("world size", f"{p.world_size or '-'}  ({p.members or '-'} nodes)")
        table.add_row("restarts", str(p.restarts))
        table.add_row("checkpoint", p.last_checkpoint)
        if p.val:
            table.add_row("validation", "  ".join(f"{k} {v:.4f}" for k, v in p.val.items()))
        table.add_row("membership", p.last_change)
        table.add_row("last failure", p.last_failure)
        return Panel(table, title=f"elasticml · {p.run_id} · {p.node}", border_style="blue")
