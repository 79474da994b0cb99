"""`report --html FILE`: one self-contained page (inline SVG and CSS; no scripts, no network).

Three plots per run on one time axis (seconds since the run started): training loss,
throughput, and world size as a step line. Failures are red markers and dashed lines on every
plot; joins green, leaves orange, so "what happened when" reads across the three at a glance.
"""

from __future__ import annotations

import html
from pathlib import Path

from elasticml.errors import UserError
from elasticml.report.summary import RunSummary
from elasticml.report.text import render_comparison, render_run

W, H = 760, 190
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 26, 30
COLOURS = {"failure": "#d62728", "join": "#2ca02c", "leave": "#ff7f0e", "start": "#7f7f7f"}
STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px auto;max-width:820px;color:#222}
h1{font-size:20px} h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
pre{background:#f6f8fa;padding:10px;white-space:pre-wrap;font-size:12px}
svg{display:block;margin:8px 0} .legend span{margin-right:14px}
"""


def write_html(summaries: list[RunSummary], path: str) -> None:
    try:
        Path(path).write_text(page(summaries), encoding="utf-8")
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror}") from None


def page(summaries: list[RunSummary]) -> str:
    title = "elasticml report: " + " vs ".join(s.run_id for s in summaries)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}</title>"
             f"<style>{STYLE}</style></head><body><h1>{_e(title)}</h1>"]
    if len(summaries) > 1:
        parts.append(f"<h2>side by side</h2><pre>{_e(render_comparison(summaries))}</pre>")
    for s in summaries:
        parts.append(run_section(s))
    parts.append("</body></html>")
    return "".join(parts)


def run_section(s: RunSummary) -> str:
    markers = _markers(s)
    end = s.duration_s or 0.0
    world = list(s.series.get("world", []))
    if world and end > world[-1][0]:
        world.append((end, world[-1][1]))
    legend = "".join(f"<span style='color:{COLOURS[k]}'>&#9632; {label}</span>" for k, label in
                     (("failure", "failure"), ("join", "node joined"), ("leave", "node left")))
    return "".join([
        f"<h2>{_e(s.run_id)} · {_e(s.status)}</h2>",
        f"<div class='legend'>{legend}</div>",
        chart([(t, v) for t, _, v in s.series.get("loss", [])], "training loss", markers, end),
        chart([(t, v) for t, _, v in s.series.get("throughput", [])], "samples/s", markers, end),
        chart(world, "world size", markers, end, steps=True, zero=True),
        f"<pre>{_e(render_run(s))}</pre>",
    ])


def chart(points: list[tuple[float, float]], title: str, markers: list[tuple[float, str, str]],
          end: float, steps: bool = False, zero: bool = False) -> str:
    """One SVG line plot, time on x, with vertical marker lines for incidents."""
    svg = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{W}' height='{H}' "
           f"viewBox='0 0 {W} {H}' role='img' aria-label='{_e(title)}'>",
           f"<text x='{LEFT}' y='16' font-size='13' font-weight='bold'>{_e(title)}</text>"]
    if not points:
        svg.append(f"<text x='{W / 2}' y='{H / 2}' text-anchor='middle' fill='#888'>"
                   "no data</text></svg>")
        return "".join(svg)
    x_max = max(end, max(t for t, _ in points), *(t for t, _, _ in markers), 1e-9)
    values = [v for _, v in points]
    y_min, y_max = (0.0 if zero else min(values)), max(values)
    if y_max - y_min < 1e-12:
        y_min, y_max = y_min - 1, y_max + 1
    pad = (y_max - y_min) * 0.08
    y_min, y_max = (y_min if zero else y_min - pad), (y_max + 1 if steps else y_max + pad)
    if min(values) >= 0:
        y_min = max(0.0, y_min)

    def x(t: float) -> float:
        return LEFT + (W - LEFT - RIGHT) * t / x_max

    def y(v: float) -> float:
        return TOP + (H - TOP - BOTTOM) * (1 - (v - y_min) / (y_max - y_min))

    svg.append(f"<rect x='{LEFT}' y='{TOP}' width='{W - LEFT - RIGHT}' "
               f"height='{H - TOP - BOTTOM}' fill='none' stroke='#ccc'/>")
    ticks = sorted({0, *values}) if steps else [y_min + (y_max - y_min) * f for f in (0, .5, 1)]
    for v in ticks:
        svg.append(f"<text x='{LEFT - 6}' y='{y(v) + 4:.1f}' font-size='11' "
                   f"text-anchor='end'>{_tick(v)}</text>")
    for frac in (0, 0.25, 0.5, 0.75, 1):
        t = x_max * frac
        svg.append(f"<text x='{x(t):.1f}' y='{H - 10}' font-size='11' "
                   f"text-anchor='middle'>{t:.0f} s</text>")
    for t, kind, label in markers:
        colour = COLOURS.get(kind, "#888")
        svg.append(f"<line x1='{x(t):.1f}' x2='{x(t):.1f}' y1='{TOP}' y2='{H - BOTTOM}' "
                   f"stroke='{colour}' stroke-dasharray='4 3'><title>{_e(label)}</title></line>")
        svg.append(f"<path d='M{x(t) - 5:.1f},{TOP - 1} h10 l-5,7 z' fill='{colour}'>"
                   f"<title>{_e(label)}</title></path>")
    path, gaps = [], [t for t, _, _ in markers]
    for i, (t, v) in enumerate(points):
        if steps and i:
            path.append(f"H{x(t):.1f}")
        # no line across a failure or membership change: the run was down in between
        broken = not steps and i and any(points[i - 1][0] < g <= t for g in gaps)
        path.append(f"{'L' if i and not broken else 'M'}{x(t):.1f},{y(v):.1f}")
    svg.append(f"<path d='{' '.join(path)}' fill='none' stroke='#1f77b4' stroke-width='1.6'/>")
    if len(points) <= 60 or steps:
        svg.extend(f"<circle cx='{x(t):.1f}' cy='{y(v):.1f}' r='2.2' fill='#1f77b4'/>"
                   for t, v in points)
    svg.append("</svg>")
    return "".join(svg)


def _markers(s: RunSummary) -> list[tuple[float, str, str]]:
    marks = [(f["time"], "failure", f"failure at step {f['step']}: rank {f['rank']}: "
              f"{f['cause']}") for f in s.failures if f.get("time") is not None]
    marks += [(m["time"], m["change"], f"{m['change']}: world size {m['previous']} -> "
               f"{m['world_size']}") for m in s.membership if m["change"] in ("join", "leave")]
    return sorted(marks)


def _tick(value: float) -> str:
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _e(text: str) -> str:
    return html.escape(str(text), quote=True)
