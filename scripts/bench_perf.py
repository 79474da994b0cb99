"""What elasticml costs when nothing fails, against the strongest plain alternative, in one run.

    python scripts/bench_perf.py [--recipe recipes/sequence.yaml] [--repeats 3] [--json out.json]
                                 [--only checkpoints]

Every figure is taken for elasticml and for its baseline in alternation (A B A B ...), so a
machine whose speed drifts affects both, and is reported as elasticml / baseline with the
minimum, median and maximum over the repeats:

* steady-state samples/s: the recipe under `elasticml train` vs `scripts/ddp_baseline.py` (a
  hand-written DDP loop of the same task, model, data and batch) under `torchrun --standalone`;
* launch -> first training step: one node, and `--nnodes 1:2` with only one node coming, vs
  `torchrun --standalone` running the baseline;
* checkpoint stall per save (time the loop is blocked), asynchronous vs synchronous writes,
  and asynchronous with `trainer.encrypt_checkpoints` vs without (the stall, and the write
  the background thread does: serialise, encrypt, fsync, rename);
* CLI responsiveness: `elasticml --help`, `train --dry-run` and `report` on a 100k-step run
  (absolute seconds, interpreter start included);
* scaling: samples/s with 1 and 2 workers on this machine.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
TORCHRUN = str(Path(PYTHON).with_name("torchrun"))


def events(run: Path) -> list[dict]:
    found = []
    for path in (run / "events").glob("*.jsonl"):
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                found.append(json.loads(line))
    return sorted(found, key=lambda e: e["t"])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def elasticml_run(recipe: str, work: Path, run_id: str, *overrides: str,
                  flags: tuple[str, ...] = (), env: dict | None = None) -> tuple[float, Path]:
    """Run `elasticml train`; returns the launch time and the run directory."""
    started = time.time()
    subprocess.run([PYTHON, "-m", "elasticml", "train", recipe, "-q", "--run-id", run_id,
                    "--run-dir", str(work / "runs"), *flags, *overrides],
                   check=True, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, **(env or {})})
    return started, work / "runs" / run_id


def baseline_run(recipe: str, work: Path, nproc: int, steps: int, warmup: int,
                 *overrides: str, script: str = "ddp_baseline.py") -> tuple[float, dict]:
    out = work / f"baseline-{time.time_ns()}.json"
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // nproc))}
    started = time.time()
    subprocess.run([TORCHRUN, "--standalone", f"--nproc-per-node={nproc}",
                    str(ROOT / "scripts" / script), recipe, *overrides,
                    "--steps", str(steps), "--warmup", str(warmup), "--out", str(out)],
                   check=True, cwd=work, env=env, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return started, json.loads(out.read_text())


def steady_samples_per_s(run: Path, warmup: int, steps: int, global_batch: int) -> float:
    marks = {e["step"]: e["t"] for e in events(run) if e["kind"] == "step" and e["rank"] == 0}
    return (steps - warmup) * global_batch / (marks[steps] - marks[warmup])


def first_step_s(run: Path, started: float) -> float:
    return min(e["t"] for e in events(run) if e["kind"] == "step") - started


def stalls(run: Path, field: str = "stall_s") -> list[float]:
    return [e[field] for e in events(run)
            if e["kind"] == "checkpoint" and e.get("reason") == "periodic"]


def checkpoint_figures(recipe: str, work: Path, repeat: int, batch: int, common: list[str],
                       add) -> None:
    """Stall and write time per periodic save: async vs sync, encrypted vs plain (async)."""
    key = {"ELASTICML_CHECKPOINT_KEY": base64.b64encode(os.urandom(32)).decode()}
    measured = {}
    for mode in ("async", "sync", "async-encrypted"):
        _, run = elasticml_run(recipe, work, f"ckpt-{mode}{repeat}", *common,
                               "trainer.checkpoint_every=10",
                               f"trainer.async_checkpoint={mode != 'sync'}",
                               f"trainer.encrypt_checkpoints={mode.endswith('encrypted')}",
                               "trainer.max_steps=60", env=key)
        step_s = batch / steady_samples_per_s(run, 10, 60, batch)
        measured[mode] = (statistics.median(stalls(run)),
                          statistics.median(stalls(run, "write_s")), step_s)
    for mode in ("async", "sync"):
        stall, _, step_s = measured[mode]
        add(f"checkpoint stall (s), {mode}", stall, None)
        add(f"checkpoint stall / step time, {mode}", stall / step_s, None)
    stall, write, step_s = measured["async-encrypted"]
    add("checkpoint stall (s), async, encrypted vs plain", stall, measured["async"][0])
    add("checkpoint stall / step time, async, encrypted", stall / step_s, None)
    add("checkpoint write in the background (s), encrypted vs plain", write,
        measured["async"][1])
    plain_s, sealed_s = serialise_seconds(256)
    add("serialise a 256 MB state (s), encrypted vs plain", sealed_s, plain_s)


def serialise_seconds(megabytes: int) -> tuple[float, float]:
    """(plain, encrypted) seconds `checkpoint.encode` takes for a state of that size: what the
    background writer does before the write itself, for a model larger than the recipe's."""
    import torch

    from elasticml.train.checkpoint import encode
    from elasticml.train.encryption import Cipher, parse_key

    cipher = Cipher(parse_key(base64.b64encode(os.urandom(32)).decode(), "bench"), True, "")
    state = {"model": {f"w{i}": torch.randn(megabytes * 2**20 // 4 // 16) for i in range(16)}}
    timings = []
    for chosen in (None, cipher):
        started = time.perf_counter()
        encode(state, chosen) if chosen else encode(state)
        timings.append(time.perf_counter() - started)
    return timings[0], timings[1]


def timed(command: list[str], work: Path) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=work, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def synthetic_long_run(work: Path) -> Path:
    """A 100k-step run's event log (every step logged, a crash midway), ~30 MB."""
    sys.path.insert(0, str(ROOT))
    from tests.synth import SynthRun

    run = SynthRun(work / "synthetic", "long", total_steps=100_000).launch().generation()
    run.train(40_000).checkpoint().crash(rank=1)
    run.generation().train(60_000).finish()
    return run.path


def spread(values: list[float]) -> tuple[float, float, float]:
    return min(values), statistics.median(values), max(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = ROOT / "recipes" / "sequence.yaml"
    parser.add_argument("--recipe", default=str(default if default.exists() else
                                                ROOT / "recipes" / "digits.yaml"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--only", choices=("checkpoints",),
                        help="measure only these figures (each still against its baseline)")
    args = parser.parse_args()

    from elasticml.recipe.load import load_recipe

    recipe = load_recipe(args.recipe)
    batch = recipe.trainer.global_batch_size
    quiet = ["trainer.eval_every=0", "trainer.checkpoint_every=0", "trainer.log_every=10",
             f"trainer.max_steps={args.steps}", "elastic.nproc_per_node=2"]
    rows: dict[str, dict[str, list[float]]] = {}

    def add(name: str, ours: float, theirs: float | None) -> None:
        row = rows.setdefault(name, {"elasticml": [], "baseline": [], "ratio": []})
        row["elasticml"].append(ours)
        if theirs is not None:
            row["baseline"].append(theirs)
            row["ratio"].append(ours / theirs)

    work = Path(tempfile.mkdtemp(prefix="elasticml-bench-"))
    long_run = synthetic_long_run(work) if args.only is None else None
    try:
        for repeat in range(args.repeats):
            print(f"repeat {repeat + 1}/{args.repeats}", file=sys.stderr, flush=True)
            if args.only == "checkpoints":
                checkpoint_figures(args.recipe, work, repeat, batch, quiet[2:], add)
                continue
            base_start, base = baseline_run(args.recipe, work, 2, args.steps, args.warmup)
            ours_start, run = elasticml_run(args.recipe, work, f"tput{repeat}", *quiet)
            add("samples/s, 2 workers", steady_samples_per_s(run, args.warmup, args.steps, batch),
                base["samples_per_s"])
            base_first = base["first_step_t"] - base_start
            add("launch -> first step (s), 1 node", first_step_s(run, ours_start), base_first)

            endpoint = f"127.0.0.1:{free_port()}"
            ours_start, run = elasticml_run(args.recipe, work, f"range{repeat}", *quiet[:3],
                                            "trainer.max_steps=3",
                                            flags=("--nnodes", "1:2", "--rdzv-endpoint",
                                                   endpoint))
            add("launch -> first step (s), --nnodes 1:2", first_step_s(run, ours_start),
                base_first)

            checkpoint_figures(args.recipe, work, repeat, batch, quiet[2:], add)

            _, run = elasticml_run(args.recipe, work, f"one{repeat}", *quiet[:4],
                                   "elastic.nproc_per_node=1")
            add("samples/s, 1 worker", steady_samples_per_s(run, args.warmup, args.steps, batch),
                None)
            add("CLI: elasticml --help (s)", timed([PYTHON, "-m", "elasticml", "--help"], work),
                None)
            add("CLI: train --dry-run (s)", timed([PYTHON, "-m", "elasticml", "train",
                                                    args.recipe, "--dry-run"], work), None)
            add("CLI: report --json, 100k-step run (s)",
                timed([PYTHON, "-m", "elasticml", "report", str(long_run), "--json"], work), None)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nrecipe {args.recipe}, {args.repeats} repeats, {os.cpu_count()} cores; "
          "min / median / max\n")
    print("| figure | elasticml | baseline | elasticml / baseline |\n|---|---|---|---|")
    for name, row in rows.items():
        cells = [" / ".join(f"{v:.3g}" for v in spread(row[key])) if row[key] else "-"
                 for key in ("elasticml", "baseline", "ratio")]
        print(f"| {name} | {' | '.join(cells)} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
