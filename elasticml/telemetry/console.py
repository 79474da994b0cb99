"""Live progress on the launching terminal, read from the run's events.

On a terminal: a rich panel redrawn a few times a second (step / total, epoch, loss,
samples/s, ETA, world size and members, restarts, downtime, last checkpoint, latest failure or
membership change), with one line printed above it whenever something happens to the group.
Not on a terminal (CI, `nohup`, a pipe): one plain `kind key=value ...` line per event worth
logging, so a log file can be grepped and parsed (`plain_line`, `record_line`).

Failures, recoveries and membership changes come from `telemetry.incidents` — the same fold
the report and TensorBoard use — so the console, the report and TensorBoard tell one story:
one line `failure step=20 rank=1 cause=...` for a crash, however many ranks went down with it.

`-q` keeps failures, recoveries and the result; `-v` adds every event as it arrives.
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
from elasticml.telemetry.incidents import Change, Failure, Incidents, Recovery

NOTABLE = {"warning", "rendezvous", "resume", "checkpoint", "eval", "error", "done",
           "agent_done", "fault", "hang", "early_stop"}
ALWAYS = {"agent_done", "early_stop"}  # failures and errors are summed up by their `failure` line
HIDDEN = {"t", "kind", "role", "pid", "traceback", "command", "pids", "node", "local_rank",
          "restart_count", "shares", "stacks"}
Record = Failure | Recovery | Change


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
    nodes: int | None = None
    members: set[str] = field(default_factory=set)
    last_checkpoint: str = "-"
    last_change: str = "-"
    last_failure: str = "-"
    val: dict = field(default_factory=dict)
    early_stopping: str = ""
    rate_steps: list[tuple[float, int]] = field(default_factory=list)
    incidents: Incidents = field(default_factory=Incidents)

    @property
    def restarts(self) -> int:
        return self.incidents.restarts

    def fold(self, event: Event) -> list[Record]:
        """Update from one event; returns the failures/recoveries/changes it completed."""
        kind = event["kind"]
        if kind == "step":
            self.step, self.total = event["step"], event.get("total_steps", self.total)
            self.epoch, self.loss = event.get("epoch", 0.0), event.get("loss")
            self.lr, self.samples_per_s = event.get("lr"), event.get("samples_per_s")
            self.world_size = event.get("world_size", self.world_size)
            self.rate_steps = [*self.rate_steps[-20:], (event["t"], event["step"])]
        elif kind == "rendezvous":
            self.world_size, self.nodes = event.get("world_size"), event.get("group_world_size")
            self.members = {m["node"] if isinstance(m, dict) else str(m)
                            for m in event.get("members") or []}
            self.rate_steps = []  # throughput changes with the group; start the ETA afresh
        elif kind == "start" and event.get("node"):
            self.members.add(event["node"])
        elif kind == "checkpoint":
            self.last_checkpoint = f"step {event.get('step')} ({event.get('reason')})"
        elif kind == "eval" and event.get("split") == "val":
            self.val = {k: v for k, v in (event.get("metrics") or {}).items()
                        if isinstance(v, int | float)}
            count = event.get("early_stopping")
            if isinstance(count, dict):
                best = _num(count.get("best_value"), ".4f")
                self.early_stopping = (
                    f"{count.get('stale')} / {count.get('patience')} validations without "
                    f"improvement (best {count.get('metric')} {best} at step "
                    f"{count.get('best_step')})")
        elif kind == "early_stop":
            self.early_stopping = str(event.get("message"))
        elif kind == "resume":
            self.step = max(self.step, event.get("step") or 0)
        records = self.incidents.fold(event)
        for record in records:
            if isinstance(record, Failure):
                self.last_failure = f"step {record.step}, rank {record.rank}: {record.cause}"
            elif isinstance(record, Change) and record.kind != "start":
                self.last_change = (f"{record.kind}: world size {record.previous} -> "
                                    f"{record.world_size} at step {record.step}")
        return records

    def eta_s(self) -> float | None:
        if len(self.rate_steps) < 2 or not self.total:
            return None
        (t0, s0), (t1, s1) = self.rate_steps[0], self.rate_steps[-1]
        if s1 <= s0:
            return None
        return max(0.0, (self.total - self.step) * (t1 - t0) / (s1 - s0))


def plain_line(event: Event) -> str | None:
    """One parseable line for an event, or None when it is not worth a line."""
    kind = event["kind"]
    if kind == "early_stop":
        return (f"early_stop step={event.get('step')} best_step={event.get('best_step')} "
                f"best_value={_compact(event.get('best_value'))} "
                f"message={_compact(event.get('message'))}")
    if kind == "step":
        return (f"step={event['step']}/{event.get('total_steps', '?')} "
                f"epoch={event.get('epoch', 0):.2f} loss={_num(event.get('loss'), '.4f')} "
                f"lr={_num(event.get('lr'), '.3g')} "
                f"samples_per_s={_num(event.get('samples_per_s'), '.0f')} "
                f"world_size={event.get('world_size')}")
    fields = {k: v for k, v in event.items() if k not in HIDDEN}
    if kind == "eval":
        fields["metrics"] = {k: round(v, 4) for k, v in (event.get("metrics") or {}).items()
                             if isinstance(v, float | int)}
    text = " ".join(f"{k}={_compact(v)}" for k, v in fields.items()
                    if v is not None and v != {} and v != [])
    return f"{kind} {text}".rstrip()


def record_line(record: Record) -> str:
    """The line for a failure, a recovery or a membership change."""
    if isinstance(record, Failure):
        return (f"failure step={record.step} rank={record.rank} node={record.node or '-'} "
                f"cause={_compact(record.cause)}")
    if isinstance(record, Recovery):
        return (f"recovered after={record.cause} step={record.resumed_step} "
                f"downtime_s={record.downtime_s or 0:.2f} steps_lost={record.steps_lost or 0} "
                f"source={record.source}")
    return (f"membership change={record.kind} world_size={record.world_size} "
            f"previous={record.previous} nodes={record.nodes} step={record.step}")


def _wanted(event: Event, quiet: bool, verbose: bool) -> bool:
    kind = event["kind"]
    if verbose:
        return True
    if quiet:
        return kind in ALWAYS or (kind == "done" and event.get("rank", 0) == 0)
    if kind in ("resume", "done", "start") and event.get("rank", 0) != 0:
        return False
    return kind == "step" or kind in NOTABLE


def _num(value, spec: str) -> str:
    return format(value, spec) if isinstance(value, int | float) else "-"


def _compact(value) -> str:
    if isinstance(value, bool | int) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ",".join(f"{k}:{_compact(v)}" for k, v in value.items())
    if isinstance(value, str) and len(value) < 40 and "'" not in value:
        return value.replace(" ", "_")
    return repr(" ".join(str(value).split()))


class LiveConsole:
    """Shows events as they arrive; `feed()` is called from the launcher's polling thread."""

    def __init__(self, progress: Progress, quiet: bool = False, verbose: bool = False,
                 stream=None) -> None:
        self.progress, self.quiet, self.verbose = progress, quiet, verbose
        self.stream = stream or sys.stdout
        self.console = Console(file=self.stream)
        self.started = time.time()
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
        said: list = []  # lines, and records rendered only after the whole batch is folded
        for event in events:
            records = self.progress.fold(event)
            shown = _wanted(event, self.quiet, self.verbose) if self.live is None else (
                self.verbose or event["kind"] in ALWAYS)
            if self.live is not None or self.quiet:  # the panel shows the starting world size
                records = [r for r in records if not (isinstance(r, Change) and
                                                      r.kind == "start")]
            said += [plain_line(event) if shown else None, *records]
        # A failure's root cause can change while its group's reports arrive (the injected
        # or signalled rank outranks a peer that only lost its connection), so failure lines
        # are written from the records as they stand at the end of the batch.
        for item in said:
            self._say(item if item is None or isinstance(item, str) else record_line(item))
        if self.live:
            self.live.update(self.render())

    def _say(self, line: str | None) -> None:
        if not line:
            return
        if self.live:
            style = "red" if line.startswith(("failure", "error", "hang")) else "yellow"
            self.live.console.print(line, style=style, markup=False, highlight=False)
        else:
            print(line, file=self.stream, flush=True)

    def render(self) -> Panel:
        p = self.progress
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold cyan")
        table.add_column()
        total = f"{p.step:,} / {p.total:,}" if p.total else f"{p.step:,}"
        eta = p.eta_s()
        table.add_row("step", f"{total}   epoch {p.epoch:.2f}")
        table.add_row("loss", _num(p.loss, ".4f") + (f"   lr {p.lr:.3g}" if p.lr is not None
                                                     else ""))
        table.add_row("samples/s", f"{p.samples_per_s:,.0f}" if p.samples_per_s else "-")
        table.add_row("ETA", _duration(eta) if eta is not None else "-")
        members = ", ".join(sorted(p.members)) or "-"
        nodes = f"{p.nodes} node{'s' if p.nodes != 1 else ''}" if p.nodes else "- nodes"
        table.add_row("world size", f"{p.world_size or '-'}  ({nodes}: {members})")
        down = p.incidents.downtime_s
        table.add_row("restarts", f"{p.restarts}" + (f"   downtime {down:.1f} s, "
                                                      f"{p.incidents.steps_lost} steps lost"
                                                      if p.restarts else ""))
        table.add_row("checkpoint", p.last_checkpoint)
        if p.val:
            table.add_row("validation", "  ".join(f"{k} {v:.4f}" for k, v in p.val.items()))
        if p.early_stopping:
            table.add_row("early stopping", p.early_stopping)
        table.add_row("membership", p.last_change)
        table.add_row("last failure", p.last_failure)
        elapsed = _duration(time.time() - self.started)
        return Panel(table, title=f"elasticml · {p.run_id} · {p.node}",
                     subtitle=f"{elapsed} elapsed", border_style="blue")


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
