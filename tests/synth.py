"""Synthetic run dirs: the event log a real run would write, without running anything.

`SynthRun` writes events in the same layout and format as `telemetry.events.EventLog` (one
JSON line per event, one file per process), so report, TensorBoard and console tests exercise
the real readers on runs of any length and with any mix of crashes, joins and leaves.
"""

from __future__ import annotations

import json
from pathlib import Path

T0 = 1_700_000_000.0


class SynthRun:
    def __init__(self, root: Path, run_id: str = "synth", nproc: int = 2, node: str = "vm",
                 step_s: float = 0.05, global_batch: int = 64, total_steps: int = 100) -> None:
        self.path = Path(root) / run_id
        (self.path / "events").mkdir(parents=True, exist_ok=True)
        self.run_id, self.nproc, self.node = run_id, nproc, node
        self.step_s, self.global_batch, self.total_steps = step_s, global_batch, total_steps
        self.t, self.step, self.world = T0, 0, 0
        self.restart_count, self._pid = 0, 1000
        self.agent = self._open("agent")
        self.workers: list[tuple] = []

    # --- writing -----------------------------------------------------------------------

    def _open(self, role: str):
        self._pid += 1
        path = self.path / "events" / f"{role}-{self.node}-{self._pid}.jsonl"
        return [path.open("a"), role, self._pid]

    def _emit(self, handle, kind: str, **fields) -> dict:
        file, role, pid = handle
        event = {"t": round(self.t, 4), "kind": kind, "role": role, "node": self.node,
                 "pid": pid, **fields}
        file.write(json.dumps(event) + "\n")
        file.flush()
        return event

    def agent_event(self, kind: str, **fields) -> dict:
        return self._emit(self.agent, kind, **fields)

    def worker_event(self, rank: int, kind: str, **fields) -> dict:
        handle, fixed = self.workers[rank]
        return self._emit(handle, kind, **fixed, **fields)

    def wait(self, seconds: float) -> SynthRun:
        self.t += seconds
        return self

    # --- a run's story -----------------------------------------------------------------

    def launch(self, nnodes: str = "1") -> SynthRun:
        self.agent_event("launch", nnodes=nnodes, nproc_per_node=self.nproc, backend="c10d",
                         endpoint="127.0.0.1:0", run_id=self.run_id)
        return self

    def generation(self, nodes: int = 1, source: str | None = None,
                   steps_lost: int = 0) -> SynthRun:
        """A completed rendezvous and a started worker group that resumed its state."""
        previous = self.world or None
        self.world = nodes * self.nproc
        self.wait(0.3).agent_event("rendezvous", round=self.restart_count, seconds=0.3,
                                   group_rank=0, group_world_size=nodes, world_size=self.world,
                                   previous_world_size=previous)
        self.workers = []
        for rank in range(self.world):
            fixed = {"rank": rank, "local_rank": rank % self.nproc, "world_size": self.world,
                     "restart_count": self.restart_count}
            self.workers.append((self._open("worker"), fixed))
        self.agent_event("workers_started", restart_count=self.restart_count,
                         pids=[w[0][2] for w in self.workers])
        self.wait(2.0)
        for rank in range(self.world):
            self.worker_event(rank, "start", step=None)
        src = source or ("fresh" if self.step == 0 else "checkpoint")
        self.wait(0.5)
        for rank in range(self.world):
            self.worker_event(rank, "resume", step=self.step, source=src, source_rank=0,
                              steps_lost=steps_lost, seconds=0.01)
        return self

    def train(self, steps: int, log_every: int = 1, loss: float = 2.0) -> SynthRun:
        for _ in range(steps):
            self.step += 1
            self.t += self.step_s
            if self.step % log_every == 0:
                self.worker_event(0, "step", step=self.step, total_steps=self.total_steps,
                                  epoch=round(self.step / 28, 4), loss=loss / (1 + self.step / 50),
                                  lr=0.003, samples=self.step * self.global_batch,
                                  samples_per_s=round(self.global_batch / self.step_s, 2))
        return self

    def checkpoint(self, reason: str = "periodic", rank: int = 0) -> SynthRun:
        self.worker_event(rank, "checkpoint", step=self.step, reason=reason, seconds=0.01,
                          path=str(self.path / "checkpoints" / f"step-{self.step}.pt"))
        return self

    def evaluate(self, split: str = "val", **metrics: float) -> SynthRun:
        self.worker_event(0, "eval", step=self.step, split=split,
                          metrics=metrics or {"loss": 0.1, "accuracy": 0.97})
        return self

    def crash(self, rank: int = 1, injected: bool = True, error: str | None = None,
              traceback: str | None = None) -> SynthRun:
        """Rank `rank` dies; the others fail a moment later on the lost peer; the agent restarts."""
        if injected:
            self.worker_event(rank, "fault", fault="kill", step=self.step)
        self.wait(0.4)
        if error is None:
            self.agent_event("worker_failed", rank=rank, local_rank=rank % self.nproc,
                             exitcode=-9, signal="SIGKILL", error="<NONE>", traceback=None)
        else:
            self.agent_event("worker_failed", rank=rank, local_rank=rank % self.nproc,
                             exitcode=1, signal=None, error=error, traceback=traceback)
        for other in range(self.world):
            if other != rank:
                self.agent_event("worker_failed", rank=other, local_rank=other % self.nproc,
                                 exitcode=1, signal=None, traceback="...",
                                 error="RuntimeError: Connection closed by peer [127.0.0.1]:1")
        self.restart_count += 1
        self.agent_event("restart", cause="failure", restart_count=self.restart_count)
        return self

    def membership_restart(self) -> SynthRun:
        """A node joined or left: the healthy group restarts for a new rendezvous."""
        self.restart_count += 1
        self.agent_event("restart", cause="membership", restart_count=self.restart_count)
        return self

    def finish(self, metrics: dict | None = None) -> SynthRun:
        metrics = metrics or {"val": {"loss": 0.08, "accuracy": 0.98},
                              "test": {"loss": 0.1, "accuracy": 0.97}}
        for split, values in metrics.items():
            if split != "val":
                self.evaluate(split, **values)
        self.worker_event(0, "done", step=self.step, metrics=metrics)
        (self.path / "reports").mkdir(exist_ok=True)
        (self.path / "reports" / "final.json").write_text(json.dumps(
            {"step": self.step, "best": {"metric": "accuracy", "value": 0.98,
                                         "step": self.step}, **metrics}))
        self.wait(0.5).agent_event("agent_done", status="succeeded", seconds=self.t - T0,
                                   failures={})
        return self.close()

    def close(self) -> SynthRun:
        for handle, *_ in [self.agent, *(w[0] for w in self.workers)]:
            if hasattr(handle, "close"):
                handle.close()
        return self

    def write_recipe(self, max_steps: int = 100) -> SynthRun:
        (self.path / "recipe.yaml").write_text(
            f"run:\n  name: {self.run_id}\ntask:\n  name: digits\nmodel:\n  name: cnn\n"
            f"optimizer:\n  name: adamw\n  lr: 0.003\ntrainer:\n  max_steps: {max_steps}\n"
            f"  global_batch_size: {self.global_batch}\nelastic:\n  nnodes: 1:2\n"
            f"  nproc_per_node: {self.nproc}\n  max_restarts: 3\n")
        return self


def crash_and_join_run(root: Path, run_id: str = "story") -> SynthRun:
    """Start on one node, rank 1 crashes at step 30, a second node joins at 60, then finish."""
    run = SynthRun(root, run_id).write_recipe().launch("1:2").generation(nodes=1)
    run.train(20).checkpoint().train(10).crash(rank=1)
    run.generation(nodes=1).train(30).checkpoint()
    run.membership_restart().generation(nodes=2).train(40).evaluate()
    return run.finish()


def stopped_early_run(root: Path, run_id: str = "patient") -> SynthRun:
    """Validations every 10 steps, the best at step 20, then three without improvement: early
    stopping ends the run at step 50 and its final metrics are those of step 20's model."""
    run = SynthRun(root, run_id).write_recipe().launch().generation(nodes=1)
    best, best_step = None, None
    for stale_after, accuracy in ((0, 0.90), (0, 0.95), (1, 0.94), (2, 0.95), (3, 0.93)):
        run.train(10)
        if stale_after == 0:
            best, best_step = accuracy, run.step
        run.worker_event(0, "eval", step=run.step, split="val", metrics={"accuracy": accuracy},
                         early_stopping={"metric": "accuracy", "best_value": best,
                                         "best_step": best_step, "stale": stale_after,
                                         "patience": 3})
    message = ("stopped early at step 50: val accuracy did not improve by 0.01 for 3 "
               "evaluations")
    run.worker_event(0, "early_stop", step=50, metric="accuracy", mode="max", min_delta=0.01,
                     patience=3, best_value=0.95, best_step=20, message=message)
    metrics = {"val": {"accuracy": 0.95}, "test": {"accuracy": 0.94}}
    run.evaluate("test", accuracy=0.94)
    run.worker_event(0, "done", step=50, metrics=metrics, reason="early_stop", weights_step=20)
    (run.path / "reports").mkdir(exist_ok=True)
    (run.path / "reports" / "final.json").write_text(json.dumps(
        {"step": 50, "best": {"metric": "accuracy", "value": 0.95, "step": 20},
         "weights_step": 20, "stopped_early": {"metric": "accuracy", "message": message,
                                               "stale": 3, "patience": 3},
         **metrics}))
    run.wait(0.5).agent_event("agent_done", status="succeeded", seconds=run.t - T0, failures={})
    return run.close()
