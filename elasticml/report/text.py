"""Plain-text renderings of `RunSummary`: one run, runs side by side, and a list of runs.

Plain aligned text (no colour, no rich): it reads the same in a terminal, a CI log and an
email, and keeps `elasticml report` fast to start.
"""

from __future__ import annotations

import time

from elasticml.report.summary import RunSummary

WIDTH = 12


def render_run(s: RunSummary) -> str:
    lines = [f"run {s.run_id} · {s.status} · {s.path}"]
    add = lines.append

    def row(label: str, text: str) -> None:
        add(f"{label:<{WIDTH}}{text}")

    row("recipe", recipe_line(s.recipe) or "-")
    row("when", f"{when(s.started)}, {seconds(s.duration_s)}"
        + (" so far" if s.status == "running" else ""))
    total = f" / {s.total_steps:,}" if s.total_steps else ""
    samples = f", {s.samples:,} samples" if s.samples else ""
    row("steps", f"{s.steps:,}{total}{samples}")
    row("throughput", throughput_line(s))
    counts = ", ".join(plural(n, noun) for n, noun in (
        (len(s.failures), "failure"), (s.joins, "join"), (s.leaves, "leave")))
    row("restarts", f"{s.restarts} ({counts})")
    row("downtime", f"{seconds(s.downtime_s)} in total; {s.steps_lost} steps lost")
    if s.membership:
        add("membership")
        for m in s.membership:
            nodes = f" ({m['nodes']} node{'s' if m['nodes'] != 1 else ''})" if m["nodes"] else ""
            add(f"  {at(m['time'])}  {m['change']:<6} world size {m['world_size']}{nodes}"
                f"  at step {m['step']}")
    if s.failures:
        add("failures")
        for f in s.failures:
            where = f"rank {f['rank']}" + (f" on {f['node']}" if f["node"] else "")
            add(f"  {at(f['time'])}  step {f['step']}  {where}: {f['cause']}")
            for line in traceback_tail(f.get("traceback")):
                add(f"      {line}")
            for other in f["others"]:
                add(f"      then rank {other['rank']}: {shorten(other['cause'], 90)}")
    if s.recoveries:
        add("recoveries")
        for r in s.recoveries:
            add(f"  {at(r['time'])}  {r['cause']:<10} " + recovery_line(r))
    add(checkpoint_line(s))
    if s.metrics:
        add("metrics")
        for split, values in s.metrics.items():
            add(f"  {split:<6} " + "  ".join(f"{k} {fmt(v)}" for k, v in values.items()))
    if s.best:
        row("best", f"{s.best.get('metric')} {fmt(s.best.get('value'))} at step "
            f"{s.best.get('step')}")
    if s.stopped_early:
        scored = f"; final metrics of best.pt (step {s.weights_step})" \
            if s.weights_step is not None and s.weights_step != s.stopped_early.get("step") \
            else ""
        row("ended", f"{s.stopped_early.get('message')}{scored}")
    for warning in s.warnings:
        row("warning", warning)
    return "\n".join(lines)


def render_comparison(runs: list[RunSummary]) -> str:
    rows: list[tuple[str, list[str]]] = [
        ("status", [s.status for s in runs]),
        ("steps", [f"{s.steps:,}" for s in runs]),
        ("duration", [seconds(s.duration_s) for s in runs]),
        ("samples/s", [rate(s.samples_per_s) for s in runs]),
        ("effective", [rate(s.effective_samples_per_s) for s in runs]),
        ("restarts", [str(s.restarts) for s in runs]),
        ("failures", [str(len(s.failures)) for s in runs]),
        ("joins", [str(s.joins) for s in runs]),
        ("leaves", [str(s.leaves) for s in runs]),
        ("downtime", [seconds(s.downtime_s) for s in runs]),
        ("steps lost", [str(s.steps_lost) for s in runs]),
        ("checkpoints", [str(len(s.checkpoints)) for s in runs]),
    ]
    for split, name in _metric_names(runs):
        rows.append((f"{split} {name}", [fmt(s.metrics.get(split, {}).get(name))
                                         for s in runs]))
    header = ("", [s.run_id for s in runs])
    table = [header, *rows]
    label_w = max(len(label) for label, _ in table) + 2
    widths = [max(len(values[i]) for _, values in table) + 2 for i in range(len(runs))]
    return "\n".join(label.ljust(label_w) + "".join(v.rjust(w) for v, w in zip(values, widths,
                                                                                 strict=True))
                     for label, values in table)


def render_list(runs: list[RunSummary]) -> str:
    table = [("run", "status", "steps", "best", "when", "duration")]
    for s in runs:
        table.append((s.run_id, s.status, f"{s.steps:,}", best_line(s), when(s.started),
                      seconds(s.duration_s)))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
                     .rstrip() for row in table)


# --- pieces ------------------------------------------------------------------------------


def recipe_line(r: dict) -> str:
    parts = []
    if r.get("task"):
        parts.append(f"task {r['task']}" + (f", model {r['model']}" if r.get("model") else ""))
    if r.get("optimizer"):
        sched = f" ({r['schedule']})" if r.get("schedule") else ""
        parts.append(f"{r['optimizer']} lr {fmt(r.get('lr'))}{sched}")
    if r.get("max_steps"):
        parts.append(f"{r['max_steps']:,} steps")
    if r.get("global_batch_size"):
        parts.append(f"global batch {r['global_batch_size']}")
    if r.get("nnodes"):
        parts.append(f"nodes {r['nnodes']} x {r.get('nproc_per_node', '?')} workers")
    if r.get("max_restarts") is not None:
        parts.append(f"max restarts {r['max_restarts']}")
    return ", ".join(parts)


def throughput_line(s: RunSummary) -> str:
    text = f"{rate(s.samples_per_s)} samples/s while training"
    if s.effective_samples_per_s:
        text += f"; {rate(s.effective_samples_per_s)} overall"
    if s.samples_per_s_by_world_size:
        text += "; by world size: " + ", ".join(
            f"{size}: {rate(v)}" for size, v in s.samples_per_s_by_world_size.items())
    return text


def recovery_line(r: dict) -> str:
    if r.get("resumed_t") is None:
        return "not resumed (yet)"
    lost = r.get("steps_lost")
    return (f"downtime {seconds(r['downtime_s'])}, resumed at step {r['resumed_step']} "
            f"from {r.get('source') or '?'}" + (f", {lost} steps lost" if lost is not None
                                                 else ""))


def checkpoint_line(s: RunSummary) -> str:
    if not s.checkpoints:
        return f"{'checkpoints':<{WIDTH}}none"
    last = s.checkpoints[-1]
    saves = sum(1 for c in s.checkpoints if c["reason"] in ("failure", "signal"))
    return (f"{'checkpoints':<{WIDTH}}{len(s.checkpoints)} written, last at step {last['step']} "
            f"({last['reason']})" + (f"; {saves} saved by a survivor on failure or signal"
                                     if saves else ""))


def best_line(s: RunSummary) -> str:
    if s.best and s.best.get("value") is not None:
        return f"{s.best.get('metric')} {fmt(s.best['value'])}"
    for split in ("test", "val"):
        values = s.metrics.get(split)
        if values:
            name = next((k for k in values if k != "loss"), next(iter(values)))
            return f"{split} {name} {fmt(values[name])}"
    return "-"


def traceback_tail(text, lines: int = 3) -> list[str]:
    if not isinstance(text, str) or not text.strip():
        return []
    return [shorten(line.rstrip(), 110) for line in text.strip().splitlines()[-lines:]]


def _metric_names(runs: list[RunSummary]) -> list[tuple[str, str]]:
    names: list[tuple[str, str]] = []
    for s in runs:
        for split in ("val", "test"):
            for name in s.metrics.get(split, {}):
                if (split, name) not in names:
                    names.append((split, name))
    return names


def when(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def at(offset: float | None) -> str:
    return f"{'+' + seconds(offset):>9}" if offset is not None else " " * 9


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"


def rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:,.0f}"
    return "-" if value is None else str(value)


def shorten(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")
