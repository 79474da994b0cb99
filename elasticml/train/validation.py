"""Validations during training: the metric every rank agrees on, the best so far, early stopping.

Every rank scores its shard of the validation split and the task's metrics are combined across
ranks, so every rank sees the same numbers; `agreed` makes sure of the ones that decide
something (a rank whose value differs is warned about and the largest is used). From them
every rank tracks the best (`best.pt`) and the early-stopping count (`early_stop.py`)
identically, and both are part of the training state, so whichever rank's state wins the next
agreement carries them, whatever the world size. So does the step of the last validation
taken during training (`validated_step`): a state saved at a validation step before its
validation ran (a stop or a failure in the middle of it) is validated first when training
resumes (`missed`), so no validation goes uncounted.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from elasticml.errors import UserError
from elasticml.train.early_stop import EarlyStopping, higher_is_better
from elasticml.train.recovery import agree_on_best, is_better


class Validation:
    def __init__(self, recipe, task, rank: int, world_size: int, device: torch.device,
                 emit, warn) -> None:
        trainer = recipe.trainer
        self.metric = trainer.best_metric or task.main_metric
        self.higher = task.higher_is_better
        self.best: dict | None = None
        """{metric, value, step} of the best validation so far: the model `best.pt` holds."""
        stop = trainer.early_stopping
        watched = stop.metric or self.metric
        self.early_stopping = EarlyStopping(
            watched, stop.patience, stop.min_delta,
            higher_is_better(stop.mode, watched, task.main_metric, task.higher_is_better))
        self.validated_step: int | None = 0
        self.rank, self.world_size, self.emit, self.warn = rank, world_size, emit, warn
        self.device = device if device.type == "cuda" else torch.device("cpu")

    def record(self, metrics: dict, step: int, counts: bool) -> bool:
        """Take in one validation's metrics (the `eval` event, the early-stopping count when
        `counts`: a validation during training); True when it is a new best, for `best.pt`."""
        value = self.agreed(metrics.get(self.metric), f"validation {self.metric}", step)
        counted = counts and self.early_stopping.on
        if counted:
            self._count(metrics, value, step)
        if counts:
            self.validated_step = step
        if self.rank == 0:
            progress = {"early_stopping": self.early_stopping.progress()} if counted else {}
            self.emit("eval", step=step, split="val", metrics=metrics, **progress)
            if counted and self.early_stopping.stopped:
                stop = self.early_stopping
                self.emit("early_stop", step=step, metric=stop.metric,
                          mode="max" if stop.higher else "min", min_delta=stop.min_delta,
                          patience=stop.patience, best_value=stop.best,
                          best_step=stop.best_step, message=stop.message(step))
        if value is None or not is_better(value, self.best, self.higher):
            return False
        self.best = {"metric": self.metric, "value": value, "step": step}
        return True

    def _count(self, metrics: dict, best_value: float | None, step: int) -> None:
        """One validation for early stopping, from the agreed metric; the decision to stop is
        agreed too (any rank's stop stops all), so no rank stops alone."""
        stop = self.early_stopping
        found = metrics.get(stop.metric)
        if not isinstance(found, int | float):
            names = ", ".join(k for k, v in metrics.items() if isinstance(v, int | float))
            raise UserError(f"trainer.early_stopping.metric: '{stop.metric}' is not a "
                            f"validation metric of this task (it gives: {names})")
        value = best_value if stop.metric == self.metric else \
            self.agreed(found, f"validation {stop.metric}", step)
        decided = stop.update(value, step)
        if self.agreed(float(decided), "the early-stopping decision", step) and not decided:
            stop.stale = stop.patience

    def missed(self, step: int, every: int) -> bool:
        """Whether the validation of `step` is due and was not taken (see the module doc); a
        state without `validated_step` (an older elasticml's) is taken as validated."""
        return bool(every) and step > 0 and step % every == 0 and \
            self.validated_step is not None and self.validated_step < step

    def agree_best(self, on_disk: dict | None) -> None:
        """Fold in the best that some node's `best.pt` holds (at a restart)."""
        self.best = agree_on_best(on_disk, self.best, self.metric, self.higher, self.device)

    def agreed(self, value, name: str, step: int) -> float | None:
        """`value`, identical on every rank (one small all-reduce); None for NaN or none."""
        if not isinstance(value, int | float) or math.isnan(value):
            return None
        if self.world_size == 1:
            return float(value)
        both = torch.tensor([value, -value], dtype=torch.float64, device=self.device)
        dist.all_reduce(both, op=dist.ReduceOp.MAX)
        high, low = float(both[0]), -float(both[1])
        if high != low:
            self.warn(f"{name} differs across ranks ({low} to {high}) at step {step}; every "
                      "rank goes on with the largest")
        return high

    def ending(self, step: int, weights_step: int) -> dict:
        """What `reports/final.json` says about how training ended."""
        ending = {"weights_step": weights_step}
        if self.early_stopping.stopped:
            ending["stopped_early"] = {**self.early_stopping.progress(),
                                       "message": self.early_stopping.message(step)}
        return ending
