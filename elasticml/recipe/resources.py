"""What a recipe asks of the machine it runs on: threads per worker."""

from __future__ import annotations

import os

from elasticml.recipe.schema import Recipe


def threads_per_worker(recipe: Recipe) -> int:
    """`trainer.threads`, else this machine's usable cores // local workers (at least 1)."""
    if recipe.trainer.threads:
        return recipe.trainer.threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // recipe.elastic.nproc_per_node)
