"""Which run a `report` argument means, and the runs under a run root.

A RUN argument is a path to a run dir, or a run id under the run root (`runs/` unless
`--run-dir ROOT`); no argument means the run most recently written to. Anything that is not a
run is one `UserError` naming the path, so the command prints one line and exits 2.
"""

from __future__ import annotations

from pathlib import Path

from elasticml.errors import UserError
from elasticml.rundir import RunDir

DEFAULT_ROOT = "runs"


def resolve_runs(names: list[str], root: str | None) -> list[RunDir]:
    if not names:
        return [latest_run(root)]
    return [resolve_run(name, root) for name in names]


def resolve_run(name: str, root: str | None) -> RunDir:
    base = Path(root or DEFAULT_ROOT).expanduser()
    for candidate in (Path(name).expanduser(), base / name):
        if candidate.is_dir():
            run = RunDir(candidate.resolve())
            if run.looks_like_a_run():
                return run
            raise UserError(f"{candidate} is not an elasticml run (no events/ or recipe.yaml)")
    raise UserError(f"no run '{name}': not a directory, and not a run id under {base}/")


def latest_run(root: str | None) -> RunDir:
    runs = list_runs(root)
    if not runs:
        where = Path(root or DEFAULT_ROOT).expanduser()
        raise UserError(f"no runs under {where}/: pass a run dir or --run-dir ROOT")
    return max(runs, key=last_written)


def list_runs(root: str | None) -> list[RunDir]:
    base = Path(root or DEFAULT_ROOT).expanduser()
    if not base.is_dir():
        return []
    runs = [RunDir(p.resolve()) for p in sorted(base.iterdir()) if p.is_dir()]
    return [r for r in runs if r.looks_like_a_run()]


def last_written(run: RunDir) -> float:
    """When the run last wrote an event (or was created): newest first in listings."""
    times = [p.stat().st_mtime for p in run.events.glob("*.jsonl")] if run.events.is_dir() \
        else []
    return max(times, default=run.path.stat().st_mtime)
