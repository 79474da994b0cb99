"""The DataLoader path's throughput against a hand-written DDP + DistributedSampler loop.

    python scripts/bench_loader.py [--recipe recipes/fashion-mnist.yaml] [--repeats 3]

Both read the recipe's own Dataset through `torch.utils.data.DataLoader` with the same
settings (`data.loader`: worker processes, persistent workers, prefetch), the same model, loss,
optimizer and global batch, 2 processes on this machine; elasticml with its elastic batch
sampler under `elasticml train`, the baseline (`scripts/ddp_loader_baseline.py`) with
`DistributedSampler` under `torchrun --standalone`. Steady-state samples/s between step
`--warmup` and the last step, taken in alternation (baseline, elasticml, baseline, ...) so a
drifting machine affects both; reported as min / median / max over the repeats, and the
ratio elasticml / baseline of each pair.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_perf import ROOT, baseline_run, elasticml_run, spread, steady_samples_per_s  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "fashion-mnist.yaml"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    from elasticml.recipe.load import load_recipe

    recipe = load_recipe(args.recipe)
    batch = recipe.trainer.global_batch_size
    quiet = ["trainer.epochs=null", f"trainer.max_steps={args.steps}", "trainer.eval_every=0",
             "trainer.checkpoint_every=0", "trainer.log_every=10", "elastic.nproc_per_node=2"]
    ours, theirs = [], []
    work = Path(tempfile.mkdtemp(prefix="elasticml-bench-loader-"))
    try:
        for repeat in range(args.repeats):
            print(f"repeat {repeat + 1}/{args.repeats}", file=sys.stderr, flush=True)
            _, base = baseline_run(args.recipe, work, 2, args.steps, args.warmup,
                                   script="ddp_loader_baseline.py")
            theirs.append(base["samples_per_s"])
            _, run = elasticml_run(args.recipe, work, f"loader{repeat}", *quiet)
            ours.append(steady_samples_per_s(run, args.warmup, args.steps, batch))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
    loader = recipe.data.loader
    print(f"\nrecipe {args.recipe}, {args.repeats} repeats, 2 processes, loader workers "
          f"{loader.num_workers}, global batch {batch}; min / median / max\n")
    print("| figure | elasticml | DDP + DistributedSampler | ratio |\n|---|---|---|---|")
    cells = [" / ".join(f"{v:.3g}" for v in spread(values)) for values in (ours, theirs, ratios)]
    print(f"| samples/s, DataLoader | {' | '.join(cells)} |")
    print(f"\nmedian ratio {statistics.median(ratios):.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"elasticml": ours, "baseline": theirs,
                                               "ratio": ratios}, indent=2))


if __name__ == "__main__":
    main()
