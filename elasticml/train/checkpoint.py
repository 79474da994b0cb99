"""Checkpoints that survive kills: atomic, checksummed, and loaded without unpickling code.

File format: the `torch.save` bytes of the state, then a 72-byte trailer: `b"EMLCKPT1"` and the
payload's sha256 in hex. A file is written to a temporary
name, fsynced and renamed, so a reader sees either the old set of files or the new one. On
load the checksum is verified and the state read with `torch.load(weights_only=True)`; a
corrupt newest file is skipped for the next newest, with a warning. torch is imported only
once a file has passed its checksum, so a truncated or foreign file is turned away at once.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

MAGIC = b"EMLCKPT1"
TRAILER = len(MAGIC) + 64
_STEP_FILE = re.compile(r"^step-(\d+)\.pt$")


class CorruptCheckpoint(ValueError):
    pass


def encode(state: dict) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    return payload + MAGIC + hashlib.sha256(payload).hexdigest().encode()


def decode(blob: bytes, source: str = "checkpoint") -> dict:
    if len(blob) < TRAILER or blob[-TRAILER:-64] != MAGIC:
        raise CorruptCheckpoint(f"{source}: not an elasticml checkpoint (or truncated)")
    payload, digest = blob[:-TRAILER], blob[-64:].decode(errors="replace")
    if hashlib.sha256(payload).hexdigest() != digest:
        raise CorruptCheckpoint(f"{source}: checksum mismatch (file is corrupt or truncated)")
    import torch

    try:
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a bad file
        raise CorruptCheckpoint(f"{source}: cannot be read ({type(err).__name__})") from None


def read_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    try:
        blob = path.read_bytes()
    except OSError as err:
        raise CorruptCheckpoint(f"{path}: {err.strerror}") from None
    return decode(blob, str(path))


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


@dataclass
class Saved:
    step: int
    path: Path
    stall_s: float
    """Time the caller was blocked (snapshot + the part of the write it waited for)."""


class CheckpointManager:
    """`step-N.pt` files in one folder: save (optionally in the background), find, prune."""

    def __init__(self, folder: str | Path, keep: int = 3, warn=None) -> None:
        self.folder, self.keep = Path(folder), keep
        self.warn = warn or (lambda message: warnings.warn(message, stacklevel=3))
        self._writer: threading.Thread | None = None
        self._error: BaseException | None = None

    def path_for(self, step: int) -> Path:
        return self.folder / f"step-{step}.pt"

    def steps(self) -> list[int]:
        if not self.folder.is_dir():
            return []
        found = (_STEP_FILE.match(p.name) for p in self.folder.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def save(self, state: dict, step: int, background: bool = False,
             name: str | None = None) -> Saved:
        """Write `state`; with `background`, only the in-memory snapshot blocks the caller."""
        started = time.perf_counter()
        self.wait()
        path = self.folder / name if name else self.path_for(step)
        if background:
            snapshot = _to_cpu_copy(state)
            self._writer = threading.Thread(target=self._write, args=(path, snapshot),
                                            daemon=True, name="checkpoint-writer")
            self._writer.start()
        else:
            self._write(path, state)
        return Saved(step, path, time.perf_counter() - started)

    def wait(self) -> None:
        if self._writer is not None:
            self._writer.join()
            self._writer = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _write(self, path: Path, state: dict) -> None:
        try:
            write_atomically(path, encode(state))
            self.prune()
        except BaseException as err:  # noqa: BLE001 - surfaced by wait()
            self._error = err

    def prune(self) -> None:
        for step in self.steps()[:-self.keep]:
            self.path_for(step).unlink(missing_ok=True)

    def newest(self) -> tuple[int, dict] | None:
        """The newest checkpoint that reads back intact; corrupt newer ones are warned about."""
        for step in reversed(self.steps()):
            try:
                return step, read_checkpoint(self.path_for(step))
            except CorruptCheckpoint as err:
                self.warn(f"skipping {err}; falling back to an older checkpoint")
        return None


def _to_cpu_copy(state):
    import torch

    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        return {k: _to_cpu_copy(v) for k, v in state.items()}
    if isinstance(state, list | tuple):
        return type(state)(_to_cpu_copy(v) for v in state)
    return state
