"""Test helpers: run the real `elasticml` command and read what a run wrote."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"


def elasticml_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "elasticml", *args]


def this_checkout_env(**extra: str) -> dict[str, str]:
    """The environment with this checkout first on PYTHONPATH, so a subprocess runs this code
    and not another installed copy of elasticml."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


def run_elasticml(*args: str, cwd: Path, timeout: float = 180, env: dict | None = None):
    """Run `elasticml ARGS` to completion; its whole process group is killed on timeout."""
    process = subprocess.Popen(elasticml_command(*args), cwd=cwd, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True,
                               env=this_checkout_env(**(env or {})))
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        pytest.fail(f"elasticml {' '.join(args)} timed out\n{out[-3000:]}\n{err[-3000:]}")
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def events_of(run_dir: Path, kind: str | None = None) -> list[dict]:
    from elasticml.telemetry.events import read_events

    events = read_events(run_dir / "events")
    return [e for e in events if kind is None or e["kind"] == kind]


def final_report(run_dir: Path) -> dict:
    return json.loads((run_dir / "reports" / "final.json").read_text())
