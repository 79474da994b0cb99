"""The training loop one worker runs: setup, agree on state, train, validate, checkpoint, test.

The model is spread over the ranks as `trainer.strategy` says (`sharding.py`: ddp, fsdp or
hsdp), and the training state is kept and restored accordingly (`keeping.py`): with ddp a
failure need not lose steps, as every replica holds the whole state; with fsdp/hsdp every save
is collective and resumes at any world size. The sampler, the step counter and the best
metric are part of that state; the learning rate and the random streams are functions of
where training stands (`optim.LearningRate`, `randomness.py`), so the resumed run is the run
that would have happened.

With `trainer.early_stopping`, every validation counts towards the stop (`early_stop.py`):
the count is taken from the agreed metric and kept in the training state, the decision is
agreed by all ranks, and the run then ends as completed, its final reports scoring the model
the best checkpoint holds, which every rank gets (`_best_model`).

SIGTERM sets a flag (`stopping.py`) that is read at every step boundary, after each
checkpoint and validation, and between evaluation batches (under fsdp/hsdp only at step
boundaries, agreed by all ranks): a stop never cuts a step in half. A checkpoint that is not
on disk is never announced: the `checkpoint` event comes from the write's completion (the
writer thread for a background save).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from elasticml.data.loader import TrainBatches, subset
from elasticml.data.sampler import ElasticSampler, rank_share
from elasticml.errors import UserError
from elasticml.jobkey import read_job_key
from elasticml.recipe.checks import parse_nnodes, recipe_path
from elasticml.recipe.load import HASH_SCHEME, recipe_to_dict, recipe_to_yaml, training_hash
from elasticml.recipe.resources import threads_per_worker
from elasticml.recipe.schema import Recipe
from elasticml.rundir import RunDir
from elasticml.tasks import build_task
from elasticml.tasks.base import Shard
from elasticml.telemetry.events import EventLog
from elasticml.train.batching import Horizon, plan_batches
from elasticml.train.checkpoint import write_atomically
from elasticml.train.faults import FaultInjector
from elasticml.train.keeping import keeper_for, refuse_other_kind
from elasticml.train.losses import loss_sum
from elasticml.train.optim import LearningRate, build_optimizer
from elasticml.train.parts import grad_clip, own_optimizer, own_scheduler
from elasticml.train.progress import Progress, last_progress
from elasticml.train.randomness import seed_step
from elasticml.train.recovery import NOTHING
from elasticml.train.sample_log import SampleLog
from elasticml.train.sharding import (
    distribute,
    gradient_sync,
    layout_for,
    local_world_size,
    recompute_blocks,
    resident_bytes,
    whole_copy,
)
from elasticml.train.stopping import StopFlag, StopRequested
from elasticml.train.validation import Validation

SIGTERM_EXIT = 128 + signal.SIGTERM
TRAIN_REPORT_ROWS = 4096
"""The end-of-run training report scores at most this many training rows."""


class Trainer:
    def __init__(self, recipe: Recipe) -> None:
        self.recipe = recipe
        env = os.environ
        self.rank, self.world_size = int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1))
        self.local_rank = int(env.get("LOCAL_RANK", 0))
        self.restart_count = int(env.get("TORCHELASTIC_RESTART_COUNT", 0))
        self.run_dir = RunDir.of(recipe.run.dir, recipe.run_id).create()
        self.events = EventLog(self.run_dir.events, "worker", rank=self.rank,
                               local_rank=self.local_rank, world_size=self.world_size,
                               restart_count=self.restart_count)
        self.checkpoint_dir = recipe_path(recipe, recipe.trainer.checkpoint_dir) \
            if recipe.trainer.checkpoint_dir else self.run_dir.checkpoints
        self.layout = layout_for(recipe.trainer.strategy, self.world_size, local_world_size())
        self.keeper = keeper_for(self)
        self.training_hash = training_hash(recipe)
        self.job_key = read_job_key(None)
        self.step = 0
        self.stop = StopFlag(agreed=self.layout.sharded)
        self._before = None  # this node's progress before this attempt (for `recovered`)

    # --- setup -------------------------------------------------------------------------

    def setup(self) -> None:
        recipe, trainer = self.recipe, self.recipe.trainer
        self.progress = Progress(self.run_dir.logs, self.local_rank)
        self.samples = SampleLog(self.rank)
        torch.set_num_threads(threads_per_worker(recipe))
        self.device = _device(trainer.device, self.local_rank)
        backend = "nccl" if self.device.type == "cuda" else "gloo"
        timeout = timedelta(seconds=recipe.elastic.collective_timeout)
        # On GPUs the group also gets gloo for CPU tensors: the small host-side collectives
        # (the logged loss, the agreed stop flag) need no copy to the device.
        dist.init_process_group("cpu:gloo,cuda:nccl" if backend == "nccl" else backend,
                                timeout=timeout,
                                device_id=self.device if backend == "nccl" else None)
        self.events.emit("start", step=None, backend=backend, device=str(self.device),
                         strategy=self.layout.describe())
        self.keeper.open()

        self.task = build_task(recipe)
        self.splits = self.task.splits()
        torch.manual_seed(recipe.run.seed)
        model = self.task.build_model().to(self.device)
        self.model = model
        if trainer.activation_checkpointing:
            recompute_blocks(model)
        if self.layout.sharded:  # sharded in place; compiled after
            _, self.mesh = distribute(model, self.layout, self.device, trainer.precision)
            self.train_model = torch.compile(model) if trainer.compile else model
        else:
            self.train_model, self.mesh = distribute(
                torch.compile(model) if trainer.compile else model, self.layout, self.device,
                trainer.precision)
        min_nodes, _ = parse_nnodes(recipe.elastic.nnodes)
        min_world = min_nodes * recipe.elastic.nproc_per_node
        self.plan = plan_batches(trainer, self.world_size, min_world)
        self.sampler = ElasticSampler(len(self.splits["train"]), recipe.run.seed)
        self.horizon = Horizon.of(trainer, len(self.splits["train"]))
        self.optimizer = own_optimizer(recipe, model.parameters()) or \
            build_optimizer(recipe.optimizer, model.parameters())
        # A schedule of the recipe's own (`_target_`) is a torch scheduler stepped once per
        # step; a named one is `LearningRate`, set before every step from where training is.
        self.own_schedule = own_scheduler(recipe, self.optimizer)
        self.learning_rate = None if self.own_schedule else LearningRate(
            recipe.schedule, self.optimizer, self.horizon, self.plan.lr_scale)
        self.faults = FaultInjector(recipe.faults, self.rank, self.restart_count,
                                    self.events.emit, self.run_dir.logs,
                                    stopping=lambda: self.stop.raised,
                                    beat=lambda: self.progress.write(self.step))
        self.validation = Validation(recipe, self.task, self.rank, self.world_size,
                                     self.device, self.events.emit, self.warn)
        self._restore()
        # Until the state is agreed, a SIGTERM ends the worker at once (there is nothing of
        # its own to save, and it may be stuck starting the process group with a peer that
        # is gone); from here on it saves the last completed step first.
        signal.signal(signal.SIGTERM, self.stop.set)
        self._open_batches()

    def _open_batches(self) -> None:
        """The training loader, built from the sampler's cursor as it stands: the loader's
        workers read ahead, the cursor in the training state moves only when a step
        completes. Loading another state reopens it."""
        if getattr(self, "batches", None) is not None:
            self.batches.close()
        self.batches = TrainBatches(self.splits["train"], self.sampler, self.plan,
                                    self.world_size, self.rank, self.recipe.data.loader,
                                    self.task.collate_fn, self.device)

    def _restore(self) -> None:
        device = self.device if self.device.type == "cuda" else torch.device("cpu")
        agreed = self.keeper.restore(device, self._check_trained_here)
        if agreed.state is None:
            refuse_other_kind(self.keeper, self)
        else:
            self.load_state(agreed.state)
        self.validation.agree_best(self.keeper.best_on_disk())
        before = last_progress(self.run_dir.logs)
        last_seen = before.step
        lost = max(0, last_seen - self.step) if agreed.step != NOTHING else last_seen
        if before.time is not None and self.local_rank == 0:
            self._before = (before, lost)
        source = "fresh" if agreed.step == NOTHING else (
            "checkpoint" if agreed.local_step == agreed.step else "peer")
        self.events.emit("resume", step=self.step, source=source, source_rank=agreed.source_rank,
                         steps_lost=lost, seconds=round(agreed.seconds, 4),
                         global_batch=self.plan.global_batch, shares=list(self.plan.shares),
                         micro_batch=self.plan.micro_batch, accumulation=self.plan.accumulation)
        if self.rank == 0 and not self.run_dir.recipe.exists():
            write_atomically(self.run_dir.recipe, recipe_to_yaml(self.recipe).encode())

    def _check_trained_here(self, agreed) -> None:
        """Refuse a state trained under another recipe (the training hash differs)."""
        state = agreed.state
        if state.get("training_hash_scheme") != HASH_SCHEME:
            return  # written by an older elasticml, whose hash covered other fields
        if state.get("training_hash") == self.training_hash:
            return
        where = ("this node's checkpoint" if agreed.local_step == agreed.step
                 else f"the state from rank {agreed.source_rank}")
        raise UserError(f"{where} at step {agreed.step} was trained with another recipe "
                        f"(training hash {state.get('training_hash')}, this recipe "
                        f"{self.training_hash}): start a new run with --run-id NEW, or put "
                        "the recipe back as it was")

    # --- state -------------------------------------------------------------------------

    def state(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                **self.rest_state()}

    def rest_state(self) -> dict:
        """Everything `state()` holds but the model and optimizer (which a sharded checkpoint
        keeps in its shards)."""
        return {
            "step": self.step,
            "sampler": self.sampler.state_dict(),
            "best": self.validation.best,
            "early_stopping": self.validation.early_stopping.state_dict(),
            "validated_step": self.validation.validated_step,
            "recipe": recipe_to_dict(self.recipe),
            "training_hash": self.training_hash,
            "training_hash_scheme": HASH_SCHEME,
            "world_size": self.world_size,
            "time": time.time(),
            **({"scheduler": self.own_schedule.state_dict()} if self.own_schedule else {}),
        }

    def load_state(self, state: dict) -> None:
        """Load a state; without `model` and `optimizer` (a sharded checkpoint's rest), those
        are already loaded."""
        if "model" in state:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        self.sampler.load_state_dict(state["sampler"])
        if self.own_schedule is not None and "scheduler" in state:
            self.own_schedule.load_state_dict(state["scheduler"])
        self.step, self.validation.best = int(state["step"]), state.get("best")
        self.validation.early_stopping.load_state_dict(state.get("early_stopping"))
        self.validation.validated_step = state.get("validated_step")
        if getattr(self, "batches", None) is not None:
            self._open_batches()

    # --- training ----------------------------------------------------------------------

    def run(self) -> None:
        self.setup()
        try:
            self.train()
            self.finish()
        except StopRequested:
            self.keeper.save_last_completed(reason="signal")
            raise SystemExit(SIGTERM_EXIT) from None
        except Exception as err:
            self.keeper.after_failure(err)
            raise
        finally:
            self.keeper.wait()

    def train(self) -> None:
        trainer, window, resumed_at = self.recipe.trainer, _Window(), self.step
        self.total_steps = self.horizon.total_steps(self.step, self.sampler.samples_seen,
                                                    self.plan.global_batch)
        if self.validation.missed(self.step, trainer.eval_every):
            self.validate(counts=True)
        while not (self.horizon.done(self.step, self.sampler.samples_seen)
                   or self.validation.early_stopping.stopped):
            self.stop.at_step_boundary()
            self.faults.before_step(self.step)
            started = time.perf_counter()
            loss_sum, count = self.train_step()
            if trainer.compile and self.step == resumed_at:  # compilation happens in step one
                self.events.emit("compiled", seconds=round(time.perf_counter() - started, 3))
            if self.step == resumed_at:  # the optimizer's state exists after its first step
                self.events.emit("memory", strategy=self.layout.strategy,
                                 **resident_bytes(self.model, self.optimizer))
            self.step += 1
            self.progress.write(self.step)
            if self._before is not None:
                self._emit_recovered()
            window.add(loss_sum, count)
            if (self.step % trainer.log_every == 0 or self.step == self.total_steps
                    or self.step == resumed_at + 1):  # the first step of an attempt is news
                self.log_step(window)
            if trainer.eval_every and self.step % trainer.eval_every == 0:
                self.validate(counts=True)
                self.progress.write(self.step)
                if self.validation.early_stopping.stopped:
                    break
            if trainer.checkpoint_every and self.step % trainer.checkpoint_every == 0:
                self.save("periodic")
                self.progress.write(self.step)
        self.stop.at_step_boundary()  # a stop during the last step: saved before the end
        self.progress.finished(self.step)
        self.batches.close()

    def train_step(self) -> tuple[float, int]:
        """One optimizer step; if it fails, the live state is rolled back to the step before."""
        position = self.sampler.state_dict()
        if self.learning_rate is not None:
            self.learning_rate.apply(self.step, self.sampler.samples_seen)
        seed_step(self.recipe.run.seed, self.step, self.rank)
        try:
            return self._step(self.sampler.next_batch(self.plan.global_batch))
        except BaseException:
            self.sampler.load_state_dict(position)
            self.optimizer.zero_grad(set_to_none=True)
            raise

    def _step(self, ids: torch.Tensor) -> tuple[float, int]:
        share = rank_share(ids, self.world_size, self.rank, self.plan.micro_batch)
        scale = self.world_size / len(ids)  # DDP averages over ranks; we want sum / global batch
        weight, total = share.weight, 0.0
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16,
                                  enabled=self.recipe.trainer.precision == "bf16")
        for index, chunk in enumerate(share.chunks):
            last = index == len(share.chunks) - 1
            with gradient_sync(self.model, self.train_model, sync=last):
                batch = self.batches.next(chunk)  # the loader's batch of exactly `chunk`
                with autocast:
                    summed = loss_sum(self.task.loss(self.train_model, batch), len(chunk))
                (summed * (scale * weight)).backward()
                total += float(summed.detach()) * weight
        clip = grad_clip(self.recipe)
        if clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        self.optimizer.step()
        if self.own_schedule is not None:
            self.own_schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.samples.record(self.step, share.ids if weight else share.ids[:0])
        return total, int(len(share.ids) * weight)

    def log_step(self, window: _Window) -> None:
        totals = torch.tensor([window.loss_sum, float(window.count)], dtype=torch.float64)
        if self.world_size > 1:
            dist.all_reduce(totals)
        seconds = window.seconds()
        samples = float(totals[1])
        if self.local_rank == 0:
            self.events.emit("step", step=self.step, total_steps=self.total_steps,
                             epoch=round(self.sampler.progress, 4),
                             loss=float(totals[0] / max(1.0, samples)),
                             lr=self.optimizer.param_groups[0]["lr"],
                             samples=self.sampler.samples_seen,
                             samples_per_s=round(samples / max(seconds, 1e-9), 2))
        window.reset()

    # --- validation, checkpoints, the end ----------------------------------------------

    def evaluate(self, split: str, model: torch.nn.Module | None = None) -> dict:
        """Score `split` (this rank's share of it) with `model`, by default the model being
        trained: under fsdp/hsdp a whole copy of it (collective), so that no rank waits on
        another's batches."""
        model = self._scoring_model(model if model is not None else self.model)
        data = self.splits[split]
        if split == "train":  # the training report: a fixed sample, not a second epoch
            data = subset(data, TRAIN_REPORT_ROWS, self.recipe.run.seed)
        model.eval()
        try:
            return self.task.evaluate(model, data, self.device,
                                      Shard(self.rank, self.world_size))
        finally:
            model.train()

    def _scoring_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """`model`, or for the sharded model being trained a whole copy of it (collective):
        an FSDP module's forward is a collective, and the ranks' shares of a split differ."""
        if self.layout.sharded and model is self.model:
            return whole_copy(self.model, self.task.build_model)
        return model

    def validate(self, counts: bool = False) -> dict:
        """Score the validation split (`validation.py`); `counts`: a validation during
        training, which early stopping counts (the one at the end is not)."""
        with self.stop.between_batches():
            metrics = self.evaluate("val")
        if self.validation.record(metrics, self.step, counts):
            self.save("best", name="best.pt")
        self.stop.check()
        return metrics

    def save(self, reason: str, name: str | None = None) -> None:
        """A checkpoint of this step (`keeping.py` says who writes what, by strategy)."""
        self.keeper.save(reason, name)
        self.stop.check()

    def announce(self, reason: str, error: BaseException | None = None):
        """The `checkpoint` event, for when the file is on disk (renamed and fsynced)."""
        def announce(saved) -> None:
            self.events.emit("checkpoint", step=saved.step, path=str(saved.path), reason=reason,
                             seconds=round(saved.stall_s, 4), stall_s=round(saved.stall_s, 4),
                             write_s=round(saved.write_s, 4),
                             error=type(error).__name__ if error else None)
        return announce

    def finish(self) -> None:
        reports, stopped = {}, self.validation.early_stopping.stopped
        model, weights_step = self._best_model() if stopped else (self.model, self.step)
        every = self.recipe.trainer.eval_every
        if model is self.model and (not every or self.step % every):
            reports["val"] = self.validate()
        else:
            with self.stop.between_batches():
                reports["val"] = self.evaluate("val", model)
        model = self._scoring_model(model)  # one whole copy for both
        with self.stop.between_batches():
            reports["test"] = self.evaluate("test", model)
            reports["train"] = self.evaluate("train", model)
        if self.rank == 0:
            for split in ("test", "train"):
                self.events.emit("eval", step=self.step, split=split, metrics=reports[split],
                                 weights_step=weights_step)
        self.keeper.save_final()
        if self.rank == 0:
            self.keeper.wait()
            _write_reports(self.run_dir, self.step, reports, self.validation.best,
                           self.validation.ending(self.step, weights_step))
        if self.world_size > 1:
            dist.barrier()  # every rank scored its shard; rank 0's reports are on disk
        self.events.emit("done", step=self.step, metrics={s: _scalars(m) for s, m in
                                                          reports.items()},
                         reason="early_stop" if stopped else "finished",
                         weights_step=weights_step)
        # Past the barrier the run is complete: closing the group may fail when a peer has
        # already gone (with the store its rank 0 hosted), and that is no failure of this run.
        with contextlib.suppress(Exception):
            dist.destroy_process_group()

    def _best_model(self) -> tuple[torch.nn.Module, int]:
        """(the model `best.pt` holds, its step) on every rank, for an early stop's reports
        (`keeper.best_weights`: from a node that holds it, or the shared `best.dcp`). When
        none holds it any more (every node that wrote it is gone), the reports score the last
        step's model, with a warning."""
        best = self.validation.best
        device = self.device if self.device.type == "cuda" else torch.device("cpu")
        weights = self.keeper.best_weights(best, device)
        if weights is None:
            what = f"best.pt of step {best['step']}" if best else "a best.pt"
            self.warn(f"no node holds {what} any more; the final reports score the model of "
                      f"step {self.step}, where training stopped")
            return self.model, self.step
        model = self.task.build_model().to(self.device)
        model.load_state_dict(weights["model"])
        return model, int(best["step"])

    def warn(self, message: str) -> None:
        print(f"warning: {message}", file=sys.stderr, flush=True)
        self.events.emit("warning", message=message)

    def _emit_recovered(self) -> None:
        """The first step after a restart: how long this node did not train, what it lost."""
        before, lost = self._before
        self._before = None
        self.events.emit("recovered", step=self.step, gap_s=round(time.time() - before.time, 3),
                         steps_lost=lost, last_step_before=before.step)


class _Window:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.loss_sum, self.count, self.started = 0.0, 0, time.perf_counter()

    def add(self, loss_sum: float, count: int) -> None:
        self.loss_sum += loss_sum
        self.count += count

    def seconds(self) -> float:
        return time.perf_counter() - self.started


def _device(choice: str, local_rank: int) -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("trainer.device=cuda but no CUDA device is visible")
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def _scalars(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, int | float)}


def _write_reports(run_dir: RunDir, step: int, reports: dict, best: dict | None,
                   ending: dict) -> None:
    import json

    body = {"step": step, "best": best, **ending, **reports}
    write_atomically(run_dir.reports / "final.json", json.dumps(body, indent=2).encode())
