"""Checkpoints that survive kills: atomic, checksummed, and loaded without unpickling code.

File format: the `torch.save` bytes of the state, then a 72-byte trailer: `b"EMLCKPT1"` and the
payload's sha256 in hex. A file is written to a temporary
name, fsynced and renamed, so a reader sees either the old set of files or the new one. On
load the checksum is verified and the state read with `torch.load(weights_only=True)`; a
corrupt newest file is skipped for the next newest, with a warning. torch is imported only
once a file has passed its checksum, so a truncated or foreign file is turned away at once.

A save is announced (`on_durable`) only once its file is renamed and fsynced; for a background
save that is the writer thread's completion, never the moment the write was queued.

Every write into the folder holds the folder's lock (`flock` on `.lock`), so the local ranks
of a node that all want to save the same last completed step write it once: the first to take
the lock writes, the others find the file and skip (`save_once`). A write that takes more than
half the grace a stopping worker gets before SIGKILL (`ELASTICML_STOP_GRACE`, 30 s when unset)
is warned about once, because such a stop would be cut short.

`best.pt` gets a small record next to it, `best.json` (the best metric and the fingerprint of
the `best.pt` it describes: its sha256, or for an encrypted file its last AES-GCM tag), so a
restart learns the best on disk without reading the whole model.

With `trainer.encrypt_checkpoints` the manager's `Cipher` (`encryption.py`) encrypts those
bytes, trailer included, before they are written, and opens them before the checksum is
verified; a file that does not authenticate is corrupt like one whose checksum fails.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import re
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from elasticml.errors import CorruptCheckpoint
from elasticml.train.encryption import PLAIN, Cipher, is_encrypted

MAGIC = b"EMLCKPT1"
TRAILER = len(MAGIC) + 64
BEST = "best.pt"
BEST_RECORD = "best.json"
LOCK = ".lock"
STOP_GRACE_ENV = "ELASTICML_STOP_GRACE"
DEFAULT_STOP_GRACE_S = 30.0
_STEP_FILE = re.compile(r"^step-(\d+)\.pt$")
SHARDED_STATE = "state.pt"
SHARDED_METADATA = ".metadata"


def encode(state: dict, cipher: Cipher = PLAIN) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    return cipher.seal(payload + MAGIC + hashlib.sha256(payload).hexdigest().encode())


def decode(blob: bytes, source: str = "checkpoint", cipher: Cipher = PLAIN) -> dict:
    blob = verified(blob, source, cipher)
    import torch

    try:
        return torch.load(io.BytesIO(memoryview(blob)[:-TRAILER]), map_location="cpu",
                          weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a bad file
        raise CorruptCheckpoint(f"{source}: cannot be read ({type(err).__name__})") from None


def verified(blob: bytes, source: str = "checkpoint", cipher: Cipher = PLAIN) -> bytes:
    """The plain checkpoint bytes of `blob` (opened by `cipher`), their checksum verified."""
    blob = cipher.open(blob, source)
    if len(blob) < TRAILER or blob[-TRAILER:-64] != MAGIC:
        raise CorruptCheckpoint(f"{source}: not an elasticml checkpoint (or truncated)")
    payload, digest = memoryview(blob)[:-TRAILER], blob[-64:].decode(errors="replace")
    if hashlib.sha256(payload).hexdigest() != digest:
        raise CorruptCheckpoint(f"{source}: checksum mismatch (file is corrupt or truncated)")
    return blob


def read_checkpoint(path: str | Path, cipher: Cipher = PLAIN) -> dict:
    return decode(read_bytes(path), str(path), cipher)


def is_sharded_checkpoint(path: Path) -> bool:
    """A `step-N.dcp` folder (`sharded_checkpoint.py`), told apart without importing torch."""
    return path.is_dir() and (path / SHARDED_STATE).is_file() and \
        (path / SHARDED_METADATA).is_file()


def read_bytes(path: str | Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise CorruptCheckpoint(f"{path}: {err.strerror}") from None


def fingerprint(head: bytes, tail: bytes) -> tuple[str, str]:
    """(`best.json` field, value) naming one checkpoint file by its first 8 and last 64 bytes:
    the sha256 of a plain file, the last AES-GCM tag of an encrypted one."""
    if is_encrypted(head):
        return "tag", tail[-16:].hex()
    return "sha256", tail[-64:].decode(errors="replace")


def write_atomically(path: Path, blob: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(temporary, "wb") as handle:
        handle.write(blob)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def stop_grace_s() -> float:
    """Seconds a stopping worker has between SIGTERM and SIGKILL (set by the agent)."""
    text = os.environ.get(STOP_GRACE_ENV, "").strip()
    if not text:
        return DEFAULT_STOP_GRACE_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        from elasticml.errors import UserError

        raise UserError(f"{STOP_GRACE_ENV}={text!r} is not a number of seconds > 0; "
                        "unset it for the default of 30")
    return value


@dataclass
class Saved:
    step: int
    path: Path
    stall_s: float
    """Time the caller was blocked (snapshot + the part of the write it waited for)."""
    write_s: float | None = None
    """Time the write took (serialise, write, fsync, rename); None while it is under way."""


class CheckpointManager:
    """`step-N.pt` files in one folder: save (optionally in the background), find, prune."""

    def __init__(self, folder: str | Path, keep: int = 3, warn=None,
                 grace_s: float = DEFAULT_STOP_GRACE_S, cipher: Cipher = PLAIN) -> None:
        self.folder, self.keep, self.cipher = Path(folder), keep, cipher
        self.warn = warn or (lambda message: warnings.warn(message, stacklevel=3))
        self.grace_s = grace_s
        self._writer: threading.Thread | None = None
        self._error: BaseException | None = None
        self._warned_slow = False

    def path_for(self, step: int) -> Path:
        return self.folder / f"step-{step}.pt"

    def steps(self) -> list[int]:
        if not self.folder.is_dir():
            return []
        found = (_STEP_FILE.match(p.name) for p in self.folder.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def save(self, state: dict, step: int, background: bool = False,
             name: str | None = None, on_durable=None) -> Saved:
        """Write `state`; with `background`, only the in-memory snapshot blocks the caller.

        `on_durable(Saved)` is called once the file is on disk (from the writer thread for a
        background save); a write that fails is never announced, its error is raised by the
        next `save` or `wait`."""
        started = time.perf_counter()
        self.wait()
        path = self.folder / name if name else self.path_for(step)
        saved = Saved(step, path, 0.0)
        if background:
            snapshot = _to_cpu_copy(state)
            self._writer = threading.Thread(target=self._write_and_announce,
                                            args=(saved, snapshot, on_durable),
                                            daemon=True, name="checkpoint-writer")
            saved.stall_s = time.perf_counter() - started
            self._writer.start()
        else:
            self._write(saved, state)
            saved.stall_s = time.perf_counter() - started
            self._announce(saved, on_durable)
        return saved

    def save_once(self, state: dict, step: int, on_durable=None) -> Saved | None:
        """Write `step-N.pt` unless some process already has; None when it was there.

        The check and the write happen under the folder's lock, so of the local ranks that
        save the same step at the same moment exactly one writes; the others wait for it
        and skip. The lock is released when its holder dies, so a writer killed mid-write
        leaves the next one free to write."""
        started = time.perf_counter()
        self.wait()
        path = self.path_for(step)
        with self.locked():
            if path.is_file():
                return None
            saved = Saved(step, path, 0.0)
            self._write(saved, state, locked=True)
        saved.stall_s = time.perf_counter() - started
        self._announce(saved, on_durable)
        return saved

    def wait(self) -> None:
        if self._writer is not None:
            self._writer.join()
            self._writer = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _write_and_announce(self, saved: Saved, state: dict, on_durable) -> None:
        self._write(saved, state)
        if self._error is None and on_durable is not None:
            on_durable(saved)

    def _announce(self, saved: Saved, on_durable) -> None:
        """After a synchronous write: raise its error, or say it is on disk."""
        self.wait()
        if on_durable is not None:
            on_durable(saved)

    def _write(self, saved: Saved, state: dict, locked: bool = False) -> None:
        """Write and fsync; an error is kept for `wait` to raise (the writer is a thread)."""
        try:
            started = time.perf_counter()
            with contextlib.nullcontext() if locked else self.locked():
                blob = encode(state, self.cipher)
                write_atomically(saved.path, blob)
                if saved.path.name == BEST:
                    write_best_record(self.folder, state.get("best"), blob)
                self.prune()
            saved.write_s = time.perf_counter() - started
        except BaseException as err:  # noqa: BLE001 - surfaced by wait()
            self._error = err
            return
        self._warn_if_slow(saved)

    @contextlib.contextmanager
    def locked(self):
        """The folder's lock: every write into it holds it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            yield
        finally:
            os.close(descriptor)  # releases the lock

    def _warn_if_slow(self, saved: Saved) -> None:
        if self._warned_slow or saved.write_s is None or saved.write_s <= self.grace_s / 2:
            return
        self._warned_slow = True
        self.warn(f"writing {saved.path.name} took {saved.write_s:.1f} s, more than half of "
                  f"the {self.grace_s:g} s a stopping worker has before it is killed "
                  f"({STOP_GRACE_ENV}): a stop may be cut short and lose steps; put run.dir "
                  "on a faster disk or raise elastic.stop_grace")

    def best_on_disk(self) -> dict | None:
        """The best metric `best.pt` holds: from `best.json` when that describes this very
        file (its sha256 matches the file's trailer), else read from `best.pt` itself."""
        path = self.folder / BEST
        try:
            with open(path, "rb") as handle:
                head = handle.read(8)
                handle.seek(-64, os.SEEK_END)
                name, value = fingerprint(head, handle.read())
        except OSError:
            return None
        with contextlib.suppress(OSError, ValueError, AttributeError):
            record = json.loads((self.folder / BEST_RECORD).read_text())
            if record.get(name) == value:
                return record.get("best")
        try:
            return read_checkpoint(path, self.cipher).get("best")
        except CorruptCheckpoint as err:
            self.warn(f"ignoring {err}")
            return None

    def read_best(self, best: dict | None) -> dict | None:
        """The state in `best.pt` when it is the model of `best` (metric, value and step);
        None when this folder has no such file, or it does not read back intact."""
        if best is None or self.best_on_disk() != best:
            return None
        try:
            state = read_checkpoint(self.folder / BEST, self.cipher)
        except CorruptCheckpoint as err:
            self.warn(f"ignoring {err}")
            return None
        return state if state.get("best") == best else None

    def prune(self) -> None:
        for step in self.steps()[:-self.keep]:
            self.path_for(step).unlink(missing_ok=True)

    def newest(self) -> tuple[int, dict] | None:
        """The newest checkpoint that reads back intact; corrupt newer ones are warned about."""
        for step in reversed(self.steps()):
            try:
                return step, read_checkpoint(self.path_for(step), self.cipher)
            except CorruptCheckpoint as err:
                self.warn(f"skipping {err}; falling back to an older checkpoint")
        return None


def write_best_record(folder: Path, best: dict | None, blob: bytes) -> None:
    """`best.json` for the `best.pt` whose bytes are `blob`."""
    name, value = fingerprint(blob[:8], blob[-64:])
    write_atomically(folder / BEST_RECORD, json.dumps({"best": best, name: value}).encode())


def _to_cpu_copy(state):
    import torch

    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        return {k: _to_cpu_copy(v) for k, v in state.items()}
    if isinstance(state, list | tuple):
        return type(state)(_to_cpu_copy(v) for v in state)
    return state
