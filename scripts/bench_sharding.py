"""What sharding the model (trainer.strategy fsdp) saves and costs, against DDP and against a
hand-written FSDP2 loop, measured in one run:

    PYTHONPATH=. python scripts/bench_sharding.py [--recipe recipes/digits-fsdp.yaml]
        [--repeats 3] [--steps 120] [--warmup 20] [--nproc 2] [--json out.json]

* parameter + optimizer bytes per rank, from the `memory` event each rank writes after its
  first step (the bytes of the parameters and optimizer state it holds: its shards under fsdp),
  fsdp vs ddp;
* steady-state samples/s between step `warmup` and the last step: `elasticml train` with
  strategy fsdp vs strategy ddp, and vs `scripts/ddp_baseline.py --strategy fsdp` (the same
  task, model, data and batch in a hand-written FSDP2 loop) under `torchrun --standalone`.

The three throughput runs alternate (A B C A B C ...), so a machine whose speed drifts affects
all; each ratio is reported as min / median / max over the repeats.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_perf import baseline_run, elasticml_run, events, spread, steady_samples_per_s  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def memory(run: Path) -> list[dict]:
    return [e for e in events(run) if e["kind"] == "memory"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "digits-fsdp.yaml"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    from elasticml.recipe.load import load_recipe

    batch = load_recipe(args.recipe).trainer.global_batch_size
    quiet = ["trainer.eval_every=0", "trainer.checkpoint_every=0", "trainer.log_every=10",
             f"trainer.max_steps={args.steps}", f"elastic.nproc_per_node={args.nproc}"]
    rows: dict[str, list[float]] = {}
    work = Path(tempfile.mkdtemp(prefix="elasticml-bench-sharding-"))
    try:
        for repeat in range(args.repeats):
            print(f"repeat {repeat + 1}/{args.repeats}", file=sys.stderr, flush=True)
            runs = {}
            for strategy in ("fsdp", "ddp"):
                _, runs[strategy] = elasticml_run(args.recipe, work, f"{strategy}{repeat}",
                                                  *quiet, f"trainer.strategy={strategy}")
            _, hand = baseline_run(args.recipe, work, args.nproc, args.steps, args.warmup,
                                   "--strategy", "fsdp")
            speed = {s: steady_samples_per_s(run, args.warmup, args.steps, batch)
                     for s, run in runs.items()}
            rows.setdefault("fsdp samples/s", []).append(speed["fsdp"])
            rows.setdefault("ddp samples/s", []).append(speed["ddp"])
            rows.setdefault("hand-written FSDP2 samples/s", []).append(hand["samples_per_s"])
            rows.setdefault("fsdp / hand-written FSDP2", []).append(
                speed["fsdp"] / hand["samples_per_s"])
            rows.setdefault("fsdp / ddp", []).append(speed["fsdp"] / speed["ddp"])
            held = {s: max(m["params_bytes"] + m["optimizer_bytes"] for m in memory(run))
                    for s, run in runs.items()}
            rows.setdefault("fsdp params+optimizer MB per rank", []).append(held["fsdp"] / 1e6)
            rows.setdefault("ddp params+optimizer MB per rank", []).append(held["ddp"] / 1e6)
            rows.setdefault("fsdp / ddp memory", []).append(held["fsdp"] / held["ddp"])
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"{'figure':<36} {'min':>10} {'median':>10} {'max':>10}")
    for name, values in rows.items():
        low, middle, high = spread(values)
        print(f"{name:<36} {low:>10.3f} {middle:>10.3f} {high:>10.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
