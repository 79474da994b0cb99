"""Sharded checkpoints (fsdp/hsdp): written by every rank, read back at any world size.

A checkpoint is a folder `step-N.dcp/` in `trainer.checkpoint_dir`:

```
.metadata          torch.distributed.checkpoint's index: which bytes of which file hold what
__R_0.distcp       rank R's shards of the model and optimizer tensors
__R.sha256         the sha256 of each file rank R wrote (JSON), written once its write is done
state.pt           the rest of the training state (step, sampler, best, recipe, the
                   optimizer's hyper-parameters ...) in the checksummed format of `checkpoint.py`
```

It is written under a temporary name (`.step-N.dcp.<token>-<rank>.tmp`) and renamed by the
writers' first rank once every writer has said (an all-reduce over their group) that its part
and its digests are on disk, so a save cut off at any point never becomes a checkpoint:
`steps()` only lists renamed folders. With `trainer.async_checkpoint` the tensors are copied
to host memory on the training path (`dcp.async_save`) and written by a background thread; the
`checkpoint` event is rank 0's, after the rename and fsync.

Only tensors go through torch.distributed.checkpoint: its loader unpickles non-tensor entries
with `weights_only=False`, and its `.metadata` is a pickle. So every non-tensor value is in
`state.pt` (read with `weights_only=True`), `.metadata` is read by an unpickler that builds
only torch.distributed.checkpoint's own index classes, and a checkpoint whose index declares a
non-tensor entry is refused: loading a checkpoint runs no code.

Before a checkpoint is used it is verified: `state.pt`'s checksum, the index, every file it
names present and long enough, and every file's sha256. A checkpoint that fails is skipped for
the next newest, with a warning, as with `step-N.pt` files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import re
import secrets
import shutil
import threading
import time
import warnings
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from elasticml.train.checkpoint import (
    DEFAULT_STOP_GRACE_S,
    SHARDED_METADATA,
    SHARDED_STATE,
    CorruptCheckpoint,
    Saved,
    decode,
    encode,
    read_checkpoint,
    write_atomically,
)
from elasticml.train.encryption import PLAIN, Cipher

STATE, METADATA = SHARDED_STATE, SHARDED_METADATA

BEST = "best.dcp"
NOTHING = -1
_STEP_DIR = re.compile(r"^step-(\d+)\.dcp$")
_DIGESTS = re.compile(r"^__(\d+)\.sha256$")


class ShardedCheckpoints:
    """`step-N.dcp` folders in one folder every rank reaches: save (collective), verify, load.

    `group` is a process group of its own for the writes (gloo), so a background save's
    collectives never interleave with training's."""

    def __init__(self, folder: str | Path, keep: int = 3, warn=None,
                 grace_s: float = DEFAULT_STOP_GRACE_S, wait_s: float = 60.0) -> None:
        self.folder, self.keep = Path(folder), keep
        self.warn = warn or (lambda message: warnings.warn(message, stacklevel=3))
        self.grace_s, self.wait_s = grace_s, wait_s
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.group = dist.new_group(backend="gloo", timeout=timedelta(seconds=wait_s))
        token = torch.tensor([secrets.randbits(62) if self.rank == 0 else 0])
        dist.broadcast(token, src=0, group=self.group)
        self.token = f"{int(token):x}"
        self._writer: threading.Thread | None = None
        self._error: BaseException | None = None
        self._warned_slow = False

    # --- where things are ----------------------------------------------------------------

    def path_for(self, step: int) -> Path:
        return self.folder / f"step-{step}.dcp"

    def steps(self) -> list[int]:
        return sharded_steps(self.folder)

    def check_shared(self, device: torch.device) -> None:
        """Raise `NotShared` naming a rank that cannot see a file rank 0 wrote into the folder
        (every rank writes its shards into one folder; each node its own folder would leave
        no node with a whole checkpoint). Collective."""
        probe, unwritable = self.folder / f".shared-{self.token}", None
        if self.rank == 0:
            try:
                write_atomically(probe, self.token.encode())
            except OSError as err:
                unwritable = err.strerror or type(err).__name__
        dist.barrier(group=self.group)  # the probe is written before any rank looks
        try:
            seen = unwritable is None and probe.read_text() == self.token
        except OSError:
            seen = False
        found = torch.tensor([int(unwritable is not None), 0 if seen else self.rank + 1])
        # every rank has looked before this returns, and so before rank 0 removes the probe
        dist.all_reduce(found, op=dist.ReduceOp.MAX, group=self.group)
        if self.rank == 0:
            with contextlib.suppress(OSError):
                probe.unlink(missing_ok=True)
        if int(found[0]):
            raise Unwritable(self.folder, unwritable or "rank 0 could not write into it")
        if int(found[1]):
            raise NotShared(int(found[1]) - 1, self.folder)

    # --- saving --------------------------------------------------------------------------

    def save(self, model, optimizer, rest: dict, step: int, background: bool = False,
             name: str | None = None, on_durable: Callable[[Saved], None] | None = None) -> None:
        """Write the checkpoint of `step` (every rank calls this; collective). With
        `background`, only the copy to host memory blocks the caller."""
        self._save(model, optimizer, rest, step, self.group, background, name, on_durable)

    def save_replica(self, model, optimizer, rest: dict, step: int, group,
                     on_durable: Callable[[Saved], None] | None = None) -> None:
        """Write the checkpoint of `step` from the ranks of `group` alone, which together
        hold a whole replica (hsdp: the ranks of one node, after another node was lost and
        the job's group with it). Each surviving replica may write one; the first renamed
        is kept."""
        self._save(model, optimizer, rest, step, group, False, None, on_durable)

    def _save(self, model, optimizer, rest: dict, step: int, group, background: bool,
              name: str | None, on_durable) -> None:
        import torch.distributed.checkpoint as dcp

        started = time.perf_counter()
        if group is self.group:
            self.wait()
        else:  # a replica saving after a failure does not wait on the job's group (it may be
            self._error = None  # broken), nor report what a write on it left behind
        tensors, rest = split_state(model, optimizer, rest)
        final = self.folder / name if name else self.path_for(step)
        writers = _Writers(group)
        temporary = self.folder / f".{final.name}.{self.token}-{writers.leader}.tmp"
        saved = Saved(step, final, 0.0)
        writer = dcp.FileSystemWriter(str(temporary))
        if background:
            response = dcp.async_save(tensors, storage_writer=writer, process_group=group)
            future = getattr(response, "upload_completion", response)
            saved.stall_s = time.perf_counter() - started
            self._writer = threading.Thread(
                target=self._finish,
                args=(future.result, writers, temporary, saved, rest, on_durable),
                daemon=True, name="sharded-checkpoint-writer")
            self._writer.start()
        else:
            dcp.save(tensors, storage_writer=writer, process_group=group)
            self._finish(lambda: None, writers, temporary, saved, rest, None)
            saved.stall_s = time.perf_counter() - started
            self._raise_error()
            if on_durable is not None and writers.rank == 0:
                on_durable(saved)

    def has(self, step: int) -> bool:
        """Whether checkpoint `step` is made, once any save under way is done, as rank 0 sees
        it, on every rank (so they all decide the same; collective)."""
        with contextlib.suppress(Exception):  # a failed background write: it is not there
            self.wait()
        there = torch.tensor([int(step in self.steps()) if self.rank == 0 else 0])
        dist.broadcast(there, src=0, group=self.group)  # after rank 0's rename, if any
        return bool(there)

    def wait(self) -> None:
        if self._writer is not None:
            self._writer.join()
            self._writer = None
        self._raise_error()

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _finish(self, written, writers: _Writers, temporary: Path, saved: Saved, rest: dict,
                on_durable) -> None:
        """After this rank's files are written: its digests; then the writers agree (an
        all-reduce over their group) that every part is on disk, and the first of them writes
        `state.pt` and renames the folder, which makes it a checkpoint. When any part failed,
        every writer keeps an error for `wait` (this may be the writer thread), so they all
        raise it at the same point."""
        started = time.perf_counter()
        problem: BaseException | None = None
        try:
            written()
            mine = {p.name: _sha256(p)
                    for p in sorted(temporary.glob(f"__{writers.rank}_*.distcp"))}
            write_atomically(temporary / f"__{writers.rank}.sha256", json.dumps(mine).encode())
        except BaseException as err:  # noqa: BLE001 - agreed on below, surfaced by wait()
            problem = err
        try:  # every writer says whether its part is on disk; all fail together, or none
            done = torch.tensor([0 if problem else 1])
            dist.all_reduce(done, op=dist.ReduceOp.MIN, group=writers.group)
        except BaseException as err:  # noqa: BLE001 - a writer is gone: no checkpoint
            problem = problem or err
            done = torch.tensor([0])
        if not int(done):
            self._error = problem or RuntimeError(
                f"{saved.path.name}: another rank's part was not written; it is not a checkpoint")
            return
        try:
            if writers.rank == 0:
                write_atomically(temporary / STATE, encode(rest))
                _fsync_folder(temporary)
                _replace_folder(temporary, saved.path, replace=saved.path.name == BEST)
                self.prune()
                saved.write_s = time.perf_counter() - started
                if on_durable is not None:
                    on_durable(saved)
                self._warn_if_slow(saved)
        except BaseException as err:  # noqa: BLE001 - surfaced by wait()
            self._error = err

    def _warn_if_slow(self, saved: Saved) -> None:
        if self._warned_slow or saved.write_s is None or saved.write_s <= self.grace_s / 2:
            return
        self._warned_slow = True
        self.warn(f"writing {saved.path.name} took {saved.write_s:.1f} s, more than half of "
                  f"the {self.grace_s:g} s a stopping worker has before it is killed: a stop "
                  "may be cut short and lose steps; put trainer.checkpoint_dir on a faster "
                  "disk or raise elastic.stop_grace")

    def prune(self) -> None:
        for step in self.steps()[:-self.keep]:
            shutil.rmtree(self.path_for(step), ignore_errors=True)

    def remove_leftovers(self) -> None:
        """Temporary folders of saves that were cut off, and a `best.dcp` cut off in the
        middle of its replacement put back (rank 0, before training starts)."""
        if self.rank != 0 or not self.folder.is_dir():
            return
        for leftover in self.folder.glob(".*.dcp.*.tmp"):
            shutil.rmtree(leftover, ignore_errors=True)
        old, best = self.folder / f".{BEST}.old", self.folder / BEST
        if old.is_dir() and not best.exists():
            os.replace(old, best)

    # --- reading -------------------------------------------------------------------------

    def newest(self) -> int:
        """The newest step that verifies; newer ones that do not are renamed out of the way
        (`step-N.dcp.corrupt`), so that a new save of their step is not refused."""
        def set_aside(message: str, step: int) -> None:
            self.warn(message)
            with contextlib.suppress(OSError):
                os.replace(self.path_for(step), self.folder / f"step-{step}.dcp.corrupt")
        return newest_verified(self.folder, set_aside)

    def agree_on_newest(self, device: torch.device) -> int:
        """Rank 0's `newest()`, on every rank (the folder is shared; one rank verifies)."""
        step = torch.tensor([self.newest() if self.rank == 0 else NOTHING], dtype=torch.long)
        dist.broadcast(step, src=0, group=self.group)
        return int(step)

    def load(self, path: Path, model, optimizer) -> dict:
        """Load the model and optimizer of checkpoint `path` into this rank's shards, at
        whatever world size this is; the rest of the state is returned. Collective."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import (
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        rest = read_rest(path)
        tensors, _ = split_state(model, optimizer, {})
        dcp.load(tensors, storage_reader=SafeReader(str(path)), process_group=self.group)
        set_model_state_dict(model, tensors["model"])
        optimizer_state = join_optimizer(tensors["optimizer"], rest.pop("_optimizer"))
        set_optimizer_state_dict(model, optimizer, optimizer_state)
        return rest

    def best_on_disk(self) -> dict | None:
        try:
            return read_rest(self.folder / BEST).get("best")
        except CorruptCheckpoint:
            return None

    def read_best(self, best: dict | None) -> dict | None:
        """`{"model": whole state dict}` from `best.dcp` when it is the model of `best`, on
        every rank; None when it is not there or does not verify (collective: every rank
        waits until rank 0 has made a `best.dcp` under way)."""
        self.has(NOTHING)  # returns on every rank once rank 0 is past its rename
        path, weights = self.folder / BEST, None
        try:
            if best is not None and read_rest(path).get("best") == best:
                weights = {"model": read_whole_model(path)}
        except CorruptCheckpoint as err:
            self.warn(f"ignoring {err}")
        read = torch.tensor([int(weights is not None)])
        dist.all_reduce(read, op=dist.ReduceOp.MIN, group=self.group)
        return weights if int(read) else None  # all score the same model, or none the best


class _Writers:
    """The ranks writing one checkpoint: this rank's place among them, their number, and the
    global rank of their first (which names the temporary folder)."""

    def __init__(self, group) -> None:
        self.group = group
        self.rank, self.size = dist.get_rank(group), dist.get_world_size(group)
        self.leader = dist.get_global_rank(group, 0)


class Unwritable(Exception):
    def __init__(self, folder: Path, reason: str) -> None:
        super().__init__(f"cannot write into the checkpoint folder {folder} ({reason})")


class NotShared(Exception):
    def __init__(self, rank: int, folder: Path) -> None:
        super().__init__(f"rank {rank} cannot see the checkpoint folder {folder} that rank 0 "
                         "writes into")
        self.rank, self.folder = rank, folder


def sharded_steps(folder: Path) -> list[int]:
    """The steps of the `step-N.dcp` folders in `folder` (only renamed, i.e. made, ones)."""
    if not folder.is_dir():
        return []
    found = (_STEP_DIR.match(p.name) for p in folder.iterdir())
    return sorted(int(m.group(1)) for m in found if m)


def newest_verified(folder: Path, skipped) -> int:
    """The newest step whose checkpoint in `folder` verifies (NOTHING without one); each
    newer one that does not is told to `skipped(message, step)`."""
    for step in reversed(sharded_steps(folder)):
        try:
            verify(folder / f"step-{step}.dcp")
            return step
        except CorruptCheckpoint as err:
            skipped(f"skipping {err}; falling back to an older checkpoint", step)
    return NOTHING


# --- the state split in two ------------------------------------------------------------


def split_state(model, optimizer, rest: dict) -> tuple[dict, dict]:
    """({"model": ..., "optimizer": ...} with tensors only, for DCP; `rest` plus
    `_optimizer`: the optimizer's hyper-parameters and any non-tensor state)."""
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    optimizer_state = get_optimizer_state_dict(model, optimizer)
    tensors, plain = {}, {}
    for fqn, values in optimizer_state["state"].items():
        for key, value in values.items():
            (tensors if isinstance(value, torch.Tensor) else plain).setdefault(fqn, {})[key] = value
    rest = {**rest, "_optimizer": {"param_groups": optimizer_state["param_groups"],
                                   "state": plain}}
    return {"model": get_model_state_dict(model), "optimizer": tensors}, rest


def join_optimizer(tensors: dict, plain: dict) -> dict:
    state = {fqn: dict(values) for fqn, values in tensors.items()}
    for fqn, values in plain["state"].items():
        state.setdefault(fqn, {}).update(values)
    return {"state": state, "param_groups": plain["param_groups"]}


# --- verifying and reading without a process group --------------------------------------


def read_rest(path: Path) -> dict:
    try:
        blob = (path / STATE).read_bytes()
    except OSError as err:
        raise CorruptCheckpoint(f"{path}: no {STATE} ({err.strerror})") from None
    return decode(blob, f"{path / STATE}")


def verify(path: Path) -> None:
    """Raise `CorruptCheckpoint` unless `state.pt`, the index, and every file the index names
    are there, whole, and match the digests their ranks wrote."""
    read_rest(path)
    metadata = read_metadata(path)
    digests = {}
    for listing in path.glob("__*.sha256"):
        if _DIGESTS.match(listing.name):
            try:
                digests.update(json.loads(listing.read_text()))
            except (OSError, ValueError) as err:
                raise CorruptCheckpoint(f"{listing}: unreadable ({err})") from None
    needed: dict[str, int] = {}
    for info in metadata.storage_data.values():
        name = str(info.relative_path)
        needed[name] = max(needed.get(name, 0), int(info.offset) + int(info.length))
    for name, length in needed.items():
        file = path / name
        if not file.is_file() or file.stat().st_size < length:
            raise CorruptCheckpoint(f"{file}: missing or truncated")
        if digests.get(name) != _sha256(file):
            raise CorruptCheckpoint(f"{file}: checksum mismatch (file is corrupt)")


_INDEX_CLASSES = {
    ("torch.distributed.checkpoint.metadata", name) for name in (
        "Metadata", "TensorStorageMetadata", "TensorProperties", "ChunkStorageMetadata",
        "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING")
} | {("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"),
     ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"),
     ("collections", "OrderedDict")}


class _IndexUnpickler(pickle.Unpickler):
    """Builds torch.distributed.checkpoint's index classes, torch dtypes and sizes, nothing
    else: an index file cannot make the reader run code."""

    def find_class(self, module: str, name: str):
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if (module, name) in _INDEX_CLASSES:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a checkpoint index")


def read_metadata(path: Path):
    from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata

    try:
        with open(path / METADATA, "rb") as handle:
            metadata = _IndexUnpickler(handle).load()
    except OSError as err:
        raise CorruptCheckpoint(f"{path}: no index ({err.strerror})") from None
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a bad file
        raise CorruptCheckpoint(f"{path / METADATA}: cannot be read ({err})") from None
    if not isinstance(metadata, Metadata) or not all(
            isinstance(m, TensorStorageMetadata) for m in metadata.state_dict_metadata.values()):
        raise CorruptCheckpoint(f"{path / METADATA}: not an index of tensors only")
    return metadata


def _safe_reader_class():
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class Reader(FileSystemReader):
        def read_metadata(self, *args, **kwargs):
            metadata = read_metadata(Path(self.path))
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return Reader


def SafeReader(path: str):  # noqa: N802 - reads as the class it builds
    """torch's `FileSystemReader` with the index read by `_IndexUnpickler`."""
    return _safe_reader_class()(path)


def read_whole_model(path: Path) -> dict:
    """The model's full (unsharded) state dict from a sharded checkpoint, in this process
    alone: for eval and export, at any process count. The checkpoint is verified first."""
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    verify(path)
    loaded: dict = {}
    # torch's own dcp_to_torch_save does this: the public `load` fills only keys the dict has
    _load_state_dict(loaded, storage_reader=SafeReader(str(path)),
                     planner=_EmptyStateDictLoadPlanner(keys={"model"}), no_dist=True)
    return loaded["model"]


def read_any_checkpoint(path: str | Path, cipher: Cipher = PLAIN) -> dict:
    """A `step-N.pt` file's state, or a sharded checkpoint's (`read_sharded`)."""
    path = Path(path)
    return read_sharded(path) if path.is_dir() else read_checkpoint(path, cipher)


def read_sharded(path: Path) -> dict:
    """The state eval and export use: `state.pt`'s fields with the whole model as `model`."""
    state = read_rest(path)
    state.pop("_optimizer", None)
    state["model"] = read_whole_model(path)
    return state


# --- files -----------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _replace_folder(temporary: Path, final: Path, replace: bool) -> None:
    """Rename `temporary` to `final`. An existing `final` is kept (another replica wrote the
    same step first) unless `replace` (best.dcp): then it is moved aside first and removed
    after, so some whole folder is under that name but for the instant between."""
    if not replace:
        try:
            os.rename(temporary, final)  # fails on a folder that is there already
        except OSError:
            if not final.is_dir():
                raise
            shutil.rmtree(temporary, ignore_errors=True)
            return
        _fsync_folder(final.parent)
        return
    old = final.with_name(f".{final.name}.old")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(temporary, final)
    _fsync_folder(final.parent)
    shutil.rmtree(old, ignore_errors=True)

