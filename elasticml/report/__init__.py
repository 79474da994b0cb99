"""`elasticml report`: what happened in a run, read from its run dir (never imports torch).

* `summary.py`  — `RunSummary` and `summarise(run_dir)`: the facts, from the events
* `reading.py`  — reading the event files fast enough for 100k-step runs
* `locate.py`   — which run a RUN argument means; the runs under a run root
* `text.py`     — terminal text: one run, runs side by side, a list of runs
* `html.py`     — a self-contained HTML page with SVG plots
"""

from __future__ import annotations

import json

from elasticml.report.locate import list_runs, resolve_runs
from elasticml.report.summary import RunSummary, summarise


def report(names: list[str], root: str | None, as_json: bool = False,
           html: str | None = None) -> str:
    """The text (or JSON) `elasticml report` prints; writes the HTML page when asked."""
    summaries = [summarise(run) for run in resolve_runs(names, root)]
    if html:
        from elasticml.report.html import write_html

        write_html(summaries, html)
    if as_json:
        bodies = [s.to_json() for s in summaries]
        return json.dumps(bodies[0] if len(bodies) == 1 else bodies, indent=2, default=str)
    from elasticml.report.text import render_comparison, render_run

    if len(summaries) == 1:
        return render_run(summaries[0])
    return render_comparison(summaries)


def runs_table(root: str | None, as_json: bool = False) -> str:
    """`elasticml runs`: every run under the root, newest first."""
    from elasticml.report.locate import last_written
    from elasticml.report.text import render_list

    runs = sorted(list_runs(root), key=last_written, reverse=True)
    summaries = [summarise(run) for run in runs]
    if as_json:
        return json.dumps([{"run_id": s.run_id, "status": s.status, "steps": s.steps,
                            "best": s.best, "started": s.started, "duration_s": s.duration_s,
                            "path": s.path} for s in summaries], indent=2)
    if not summaries:
        return "no runs"
    return render_list(summaries)


__all__ = ["RunSummary", "report", "runs_table", "summarise"]
