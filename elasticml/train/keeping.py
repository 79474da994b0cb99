"""Where a worker's training state is kept, by strategy: what to restore, how to save.

`Replicated` (ddp): every rank holds the whole state, so a failure need not lose steps. Rank 0
writes `step-N.pt` to its node's disk; when a collective fails or SIGTERM arrives, the state of
the last completed step is written once per node (the first local rank to take the folder's
lock writes it); the next start broadcasts the newest state any rank holds
(`recovery.agree_on_state`): no shared filesystem is needed.

`Sharded` (fsdp/hsdp): each rank holds only its shards, so every save is collective and goes
into one folder every rank reaches (`sharded_checkpoint.py`). After a SIGTERM the ranks stop
at one agreed step and save it (`stopping.py`): nothing is lost. After a failure the job's
group is broken; under hsdp the ranks of a node, a whole replica, still save the last
completed step over their own group, so losing another node loses nothing; under fsdp the lost
ranks' shards are gone and the restart resumes from the newest checkpoint, the steps since
then counted as lost in the `resume` event and the report.

Both keep the best model (`best.pt` on every node, or `best.dcp` in the shared folder) and
announce a checkpoint only once it is on disk (`Trainer.announce`).
"""

from __future__ import annotations

import contextlib
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from elasticml.errors import UserError
from elasticml.train.checkpoint import CheckpointManager, stop_grace_s
from elasticml.train.encryption import recipe_cipher
from elasticml.train.recovery import NOTHING, Agreed, agree_on_state, share
from elasticml.train.sharded_checkpoint import BEST as BEST_SHARDED
from elasticml.train.sharded_checkpoint import (
    NotShared,
    ShardedCheckpoints,
    Unwritable,
    read_rest,
)


def replica_group(layout, timeout_s: float):
    """Under hsdp with more than one node: a gloo group of this rank's node (its ranks hold a
    whole replica), made by every rank (collective); None otherwise."""
    if layout.strategy != "hsdp" or layout.shape[0] < 2:
        return None
    nodes, per_node = layout.shape
    mine = None
    for node in range(nodes):
        group = dist.new_group(list(range(node * per_node, (node + 1) * per_node)),
                               backend="gloo", timeout=timedelta(seconds=timeout_s))
        if node == dist.get_rank() // per_node:
            mine = group
    return mine


def keeper_for(trainer):
    return Sharded(trainer) if trainer.layout.sharded else Replicated(trainer)


class Replicated:
    """ddp: `step-N.pt` on each node's own disk, the newest shared over the network."""

    other_kind = ("step-*.dcp", "fsdp/hsdp")

    def __init__(self, trainer) -> None:
        recipe = trainer.recipe
        self.trainer = trainer
        self.checkpoints = CheckpointManager(
            trainer.checkpoint_dir, recipe.trainer.keep_checkpoints, warn=trainer.warn,
            grace_s=stop_grace_s(), cipher=recipe_cipher(recipe))

    def open(self) -> None:
        """After the process group is up (nothing to do for ddp)."""

    def restore(self, device: torch.device, check) -> Agreed:
        agreed = agree_on_state(self.checkpoints, device, self.trainer.job_key)
        if agreed.state is not None:
            check(agreed)
        return agreed

    def best_on_disk(self) -> dict | None:
        return self.checkpoints.best_on_disk()

    def save(self, reason: str, name: str | None = None) -> None:
        """Rank 0 writes; `best.pt` is written on every node (by its local rank 0), so that
        the best model outlives the loss of any one node for an early stop's reports."""
        t = self.trainer
        if t.rank != 0 and not (name == "best.pt" and t.local_rank == 0):
            return
        self.checkpoints.save(t.state(), t.step, name=name,
                              background=t.recipe.trainer.async_checkpoint,
                              on_durable=t.announce(reason))

    def save_final(self) -> None:
        if self.trainer.rank == 0 and self.trainer.step not in self.checkpoints.steps():
            self.save("final")

    def save_last_completed(self, reason: str, error: BaseException | None = None) -> None:
        """Write the state of the last completed step (the live state outside a step), once
        per node: the other local ranks find the file there and skip."""
        t = self.trainer
        with contextlib.suppress(Exception):  # a failed background write must not stop this one
            self.checkpoints.wait()
        if t.step in self.checkpoints.steps():
            return
        self.checkpoints.save_once(t.state(), t.step, on_durable=t.announce(reason, error))

    def after_failure(self, error: BaseException) -> None:
        self.save_last_completed("failure", error)

    def best_weights(self, best: dict | None, device: torch.device) -> dict | None:
        """The weights of `best` on every rank: read by the ranks whose node holds that very
        `best.pt`, sent by the lowest of them to the others (sealed, and encrypted with
        encryption on), so a node that joined after the best needs no shared filesystem."""
        t = self.trainer
        self.checkpoints.wait()  # this node's own best.pt, if it was being written
        local = self.checkpoints.read_best(best)
        weights, _ = share({"model": local["model"]} if local else None, device, t.job_key,
                           self.checkpoints.cipher)
        return weights

    def wait(self) -> None:
        self.checkpoints.wait()


class Sharded:
    """fsdp/hsdp: `step-N.dcp` folders in one folder every rank reaches."""

    other_kind = ("step-*.pt", "ddp")

    def __init__(self, trainer) -> None:
        self.trainer = trainer
        self.checkpoints: ShardedCheckpoints | None = None
        self.replica = None

    def open(self) -> None:
        """The folder, checked to be one for all ranks (a folder of its own per node would
        hold no whole checkpoint). Collective."""
        t = self.trainer
        self.checkpoints = ShardedCheckpoints(
            t.checkpoint_dir, t.recipe.trainer.keep_checkpoints, warn=t.warn,
            grace_s=stop_grace_s(), wait_s=t.recipe.elastic.collective_timeout)
        try:
            self.checkpoints.check_shared(t.device)
        except NotShared as err:
            raise UserError(f"trainer.checkpoint_dir: {err}: with strategy "
                            f"{t.recipe.trainer.strategy} every rank writes its shards into "
                            "one folder; set trainer.checkpoint_dir to a folder on a filesystem "
                            "every node mounts") from None
        except Unwritable as err:
            raise UserError(f"trainer.checkpoint_dir: {err}: give the job's user write "
                            "access to it, or name another folder") from None
        self.checkpoints.remove_leftovers()
        self.replica = replica_group(t.layout, t.recipe.elastic.collective_timeout)

    def restore(self, device: torch.device, check) -> Agreed:
        """Rank 0 picks the newest checkpoint that verifies; every rank loads its shards of it
        at this world size (resharded by torch.distributed.checkpoint). The returned state is
        the rest (step, sampler, ...): the model and optimizer are loaded already."""
        t, started = self.trainer, time.perf_counter()
        step = self.checkpoints.agree_on_newest(device)
        if step == NOTHING:
            return Agreed(NOTHING, -1, None, NOTHING, time.perf_counter() - started)
        path = self.checkpoints.path_for(step)
        agreed = Agreed(step, 0, read_rest(path), step, 0.0)
        check(agreed)  # before the shards are loaded
        agreed.state = self.checkpoints.load(path, t.model, t.optimizer)
        agreed.seconds = time.perf_counter() - started
        return agreed

    def best_on_disk(self) -> dict | None:
        return self.checkpoints.best_on_disk()

    def save(self, reason: str, name: str | None = None) -> None:
        """Every rank writes its shards (`best.dcp` for the best)."""
        t = self.trainer
        self.checkpoints.save(t.model, t.optimizer, t.rest_state(), t.step,
                              background=t.recipe.trainer.async_checkpoint,
                              name=BEST_SHARDED if name == "best.pt" else name,
                              on_durable=t.announce(reason))

    def save_final(self) -> None:
        if not self.checkpoints.has(self.trainer.step):  # every rank writes its shards
            self.save("final")

    def save_last_completed(self, reason: str, error: BaseException | None = None) -> None:
        """After a stop every rank agreed on: every rank writes its shards of this step."""
        t = self.trainer
        with contextlib.suppress(Exception):  # a failed background write must not stop this one
            self.checkpoints.wait()
        if not self.checkpoints.has(t.step):
            self.checkpoints.save(t.model, t.optimizer, t.rest_state(), t.step,
                                  on_durable=t.announce(reason, error))

    def after_failure(self, error: BaseException) -> None:
        """The job's group is broken. Under hsdp this node's ranks (a whole replica) write
        the last completed step over their own group, when it still works (the failure was
        another node's); if that fails too, the restart uses the newest checkpoint."""
        t = self.trainer
        if self.replica is not None and self.checkpoints is not None:
            try:
                self._save_replica(error)
            except Exception as err:  # noqa: BLE001 - the restart falls back to the newest one
                reason = str(err).splitlines()[0][:200] if str(err) else ""
                t.warn(f"this node's replica could not save step {t.step} "
                       f"({type(err).__name__}: {reason}); the restart resumes from the "
                       "newest checkpoint")
        self.checkpoints = None  # a background write may wait on the broken group: not waited

    def _save_replica(self, error: BaseException) -> None:
        """Over this node's own gloo group (not the mesh's, which a rank may still be using
        in a collective that failed elsewhere): only when all its ranks stand at the same
        step, since one of them may have completed a step the others did not."""
        t = self.trainer
        steps = torch.tensor([t.step, -t.step])
        dist.all_reduce(steps, op=dist.ReduceOp.MAX, group=self.replica)
        if int(steps[0]) != -int(steps[1]):
            t.warn(f"this node's ranks stood at steps {-int(steps[1])} to {int(steps[0])} when "
                   "the job's group failed: no replica of one step to save; the restart "
                   "resumes from the newest checkpoint")
            return
        self.checkpoints.save_replica(t.model, t.optimizer, t.rest_state(), t.step,
                                      self.replica, on_durable=t.announce("failure", error))

    def best_weights(self, best: dict | None, device: torch.device) -> dict | None:
        """The weights of `best` on every rank, read from `best.dcp` in the shared folder."""
        return self.checkpoints.read_best(best)

    def wait(self) -> None:
        if self.checkpoints is not None:
            self.checkpoints.wait()


def refuse_other_kind(keeper, trainer) -> None:
    """Refuse to start afresh over checkpoints of the other kind (a run trained with ddp now
    asked for fsdp, or the other way round): their steps would be silently lost."""
    pattern, strategy = keeper.other_kind
    if next(trainer.checkpoint_dir.glob(pattern), None) is None:
        return
    raise UserError(f"{trainer.checkpoint_dir} holds {strategy} checkpoints ({pattern}) and none "
                    f"this trainer.strategy ({trainer.recipe.trainer.strategy}) resumes from: "
                    "set the strategy the run was trained with, or start a new run with "
                    "--run-id NEW")
