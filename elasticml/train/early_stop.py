"""Early stopping: end training once validation stops improving, by one count every rank shares.

`trainer.early_stopping.patience` counts validations (every `trainer.eval_every` steps): a
validation improves when its metric beats the best value counted so far by more than
`min_delta` in the metric's direction, and that value becomes the one to beat; after
`patience` validations in a row without improvement, training stops (Keras' and Lightning's
rule). A metric that is NaN is no improvement.

The value counted is the validation metric as agreed across the ranks (`Trainer._agreed`), and
the counters are part of the training state (`state_dict`), which every rank takes from the
same agreed state at a (re)start, whatever the world size: so every rank reaches the same
decision at the same step, and a restart or a resize continues the count where it was. The
trainer still agrees on the decision itself before acting on it, so no rank stops alone.

A state whose counters were kept for another metric, direction or `min_delta` starts the
count afresh; a changed `patience` keeps it (a stopped run trains on with a larger one).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EarlyStopping:
    metric: str
    patience: int
    min_delta: float
    higher: bool
    """Whether a higher value of `metric` is better."""
    best: float | None = None
    """The value to beat (the last improvement)."""
    best_step: int | None = None
    stale: int = 0
    """Validations in a row without improvement."""

    @property
    def on(self) -> bool:
        return self.patience > 0

    @property
    def stopped(self) -> bool:
        return self.on and self.stale >= self.patience

    def update(self, value: float | None, step: int) -> bool:
        """Count the validation of `step` (`value` None: NaN); True when training must stop."""
        if value is not None and self.improves(value):
            self.best, self.best_step, self.stale = value, step, 0
        else:
            self.stale += 1
        return self.stopped

    def improves(self, value: float) -> bool:
        if self.best is None:
            return True
        gain = value - self.best if self.higher else self.best - value
        return gain > self.min_delta

    def state_dict(self) -> dict:
        return {"metric": self.metric, "higher": self.higher, "min_delta": self.min_delta,
                "best": self.best, "best_step": self.best_step, "stale": self.stale}

    def load_state_dict(self, state: dict | None) -> None:
        same = state is not None and all(state.get(k) == getattr(self, k)
                                         for k in ("metric", "higher", "min_delta"))
        self.best = state.get("best") if same else None
        self.best_step = state.get("best_step") if same else None
        self.stale = int(state.get("stale", 0)) if same else 0

    def progress(self) -> dict:
        """What the `eval` event of a validation says about the count."""
        return {"metric": self.metric, "best_value": self.best, "best_step": self.best_step,
                "stale": self.stale, "patience": self.patience}

    def message(self, step: int) -> str:
        by = f" by {self.min_delta:g}" if self.min_delta else ""
        plural = "s" if self.patience != 1 else ""
        return (f"stopped early at step {step}: val {self.metric} did not improve{by} for "
                f"{self.patience} evaluation{plural}")


def higher_is_better(mode: str, metric: str, main_metric: str, task_higher: bool) -> bool:
    """The direction `trainer.early_stopping.mode` gives `metric`: `auto` is lower for a loss,
    the task's own direction for its main metric, and higher for any other."""
    if mode in ("max", "min"):
        return mode == "max"
    if metric == main_metric:
        return task_higher
    return "loss" not in metric
