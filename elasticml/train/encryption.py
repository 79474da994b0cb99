"""Checkpoints encrypted at rest: AES-256-GCM under a key only the job's nodes hold.

With `trainer.encrypt_checkpoints: true` every file a run writes into `checkpoints/` (periodic,
best, last-step and final) and the training state one rank broadcasts to the others at a
(re)start are encrypted; whoever copies the disk or the bucket they sit in reads nothing but
the file's length.

The key is 32 random bytes written in base64 (`openssl rand -base64 32`), first found wins:
* the environment variable `ELASTICML_CHECKPOINT_KEY` (what a scheduler's secret store sets);
* the first line of the file named by `trainer.checkpoint_key_file` (relative to the recipe).
`elasticml train` checks it before anything starts and hands it to its workers through the
environment, never the command line. It is never printed, logged, written to the run dir or
shown by `--dry-run`.

File format: a 27-byte header — `b"EMLCKPE1"`, an 8-byte key id (an HMAC of a constant under
the key: it tells "another key" from "tampered with" without revealing the key), a random
7-byte nonce prefix, the segment size — then the plain checkpoint bytes (`checkpoint.encode`,
sha256 trailer included) in segments of `SEGMENT` bytes, each sealed by AES-GCM with the
header as associated data and a nonce made of the prefix, the segment's index and a flag
that marks the last one (the STREAM construction). So a file cut at any point, segments
swapped, or any byte changed fails to open (`CorruptCheckpoint`: the trainer falls back to
the previous checkpoint, as for a checksum mismatch), and no file is limited to the 2 GiB
one AES-GCM call takes.

A key that is missing or another than the file's, and a plain file where encryption is on,
are not damage but a setup to fix: `CheckpointKeyError`, a `UserError` (one line, exit 2).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
import struct
from dataclasses import dataclass, field
from pathlib import Path

from elasticml.errors import CorruptCheckpoint, UserError

ENV = "ELASTICML_CHECKPOINT_KEY"
KEY_BYTES = 32
MAGIC = b"EMLCKPE1"
HEADER = struct.Struct(">8s8s7sI")
"""magic, key id, nonce prefix, segment size."""
SEGMENT = 16 * 1024 * 1024
TAG_BYTES = 16
MAKE_ONE = "`openssl rand -base64 32`"


class CheckpointKeyError(UserError):
    """The key cannot open the file (missing, another key) or encryption is on and the file
    is plain: a setup to fix, never taken for damage."""


@dataclass(frozen=True)
class CheckpointKey:
    raw: bytes = field(repr=False)
    where: str
    """Where the key came from (`$ELASTICML_CHECKPOINT_KEY` or the file), for messages."""

    @property
    def key_id(self) -> bytes:
        return hmac.new(self.raw, b"elasticml checkpoint key id", hashlib.sha256).digest()[:8]


def parse_key(text: str, where: str) -> CheckpointKey:
    """The key in `text` (base64 of 32 bytes); a `UserError` that never repeats it."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raw = None
    if raw is None or len(raw) != KEY_BYTES:
        found = "is not base64" if raw is None else f"decodes to {len(raw)} bytes"
        raise UserError(f"the checkpoint key in {where} {found}; it must be {KEY_BYTES} random "
                        f"bytes in base64, e.g. from {MAKE_ONE}")
    return CheckpointKey(raw, where)


def read_checkpoint_key(key_file: str | Path | None, environ: dict[str, str] | None = None,
                        file_first: bool = False) -> CheckpointKey | None:
    """The key from `$ELASTICML_CHECKPOINT_KEY` or the first line of `key_file` (the file wins
    with `file_first`: a file named on the command line); None when neither gives one."""
    env = os.environ if environ is None else environ
    sources = [("env", env.get(ENV)), ("file", key_file)]
    for kind, value in (reversed(sources) if file_first else sources):
        if kind == "env" and value:
            return parse_key(value, f"${ENV}")
        if kind == "file" and value:
            return parse_key(_first_line(Path(value).expanduser()), str(value))
    return None


def new_key_text() -> str:
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()


def _first_line(path: Path) -> str:
    try:
        lines = path.read_text().splitlines()
    except OSError as err:
        raise UserError(f"checkpoint key file {path}: cannot read it ({err.strerror}); give a "
                        f"readable file whose first line is the key ({MAKE_ONE})") from None
    except UnicodeDecodeError:
        raise UserError(f"checkpoint key file {path} is not a text file; its first line must "
                        f"be the key in base64 ({MAKE_ONE})") from None
    return lines[0] if lines else ""


def is_encrypted(head: bytes) -> bool:
    return head[:len(MAGIC)] == MAGIC


class Cipher:
    """What a process does with checkpoint bytes: encrypt on write when `encrypt`, and on read
    open encrypted bytes with `key` (refusing plain ones when `encrypt`). `hint` says how to
    give a key in this process's terms (an environment variable, a recipe key, a flag)."""

    def __init__(self, key: CheckpointKey | None, encrypt: bool, hint: str) -> None:
        if encrypt and key is None:
            raise CheckpointKeyError(f"trainer.encrypt_checkpoints is on but there is no "
                                     f"checkpoint key: {hint}")
        self.key, self.encrypt, self.hint = key, encrypt, hint

    def seal(self, blob: bytes) -> bytes:
        return encrypt(self.key, blob) if self.encrypt else blob

    def open(self, blob: bytes, source: str) -> bytes:
        """The plain checkpoint bytes of `blob`, read from `source` (a path, a rank)."""
        if not is_encrypted(blob):
            if self.encrypt:
                raise CheckpointKeyError(
                    f"{source} is not encrypted, but trainer.encrypt_checkpoints is on: "
                    "encrypt the run's checkpoints first (`elasticml checkpoints encrypt RUN "
                    "--in-place`), or turn encryption off")
            return blob
        if self.key is None:
            raise CheckpointKeyError(f"{source} is encrypted and no checkpoint key was given: "
                                     f"{self.hint}")
        return decrypt(self.key, blob, source)


PLAIN = Cipher(None, False, f"set {ENV}")
"""Plain writes; an encrypted file is refused for want of a key."""


def encrypt(key: CheckpointKey, blob: bytes) -> bytes:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    header = HEADER.pack(MAGIC, key.key_id, secrets.token_bytes(7), SEGMENT)
    aead, parts = AESGCM(key.raw), [header]
    count = max(1, -(-len(blob) // SEGMENT))
    view = memoryview(blob)
    for index in range(count):
        chunk = view[index * SEGMENT:(index + 1) * SEGMENT]
        parts.append(aead.encrypt(_nonce(header, index, index == count - 1), chunk, header))
    return b"".join(parts)


def decrypt(key: CheckpointKey, blob: bytes, source: str) -> bytes:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM


    if len(blob) < HEADER.size + TAG_BYTES:
        raise CorruptCheckpoint(f"{source}: encrypted, but too short to open (truncated)")
    header = blob[:HEADER.size]
    _, key_id, _, segment = HEADER.unpack(header)
    if not hmac.compare_digest(key_id, key.key_id):
        raise CheckpointKeyError(f"{source} is encrypted with another key than the one in "
                                 f"{key.where}")
    if not 0 < segment <= 1 << 30:
        raise CorruptCheckpoint(f"{source}: encrypted, but its header is damaged")
    aead, parts, sealed = AESGCM(key.raw), [], segment + TAG_BYTES
    body = memoryview(blob)[HEADER.size:]
    count = max(1, -(-len(body) // sealed))
    try:
        for index in range(count):
            chunk = body[index * sealed:(index + 1) * sealed]
            parts.append(aead.decrypt(_nonce(header, index, index == count - 1), chunk, header))
    except InvalidTag:
        raise CorruptCheckpoint(f"{source}: encrypted, but does not authenticate (tampered "
                                "with or truncated)") from None
    return b"".join(parts)


def _nonce(header: bytes, index: int, last: bool) -> bytes:
    prefix = HEADER.unpack(header)[2]
    return prefix + struct.pack(">IB", index, 1 if last else 0)


def recipe_cipher(recipe) -> Cipher:
    """The cipher a run's trainer uses: the recipe's `trainer.encrypt_checkpoints`, the key from
    `$ELASTICML_CHECKPOINT_KEY` or `trainer.checkpoint_key_file` (a key given while encryption
    is off still opens the encrypted files of a run that turned it off)."""
    from elasticml.recipe.checks import recipe_path

    name = recipe.trainer.checkpoint_key_file
    key = read_checkpoint_key(recipe_path(recipe, name) if name else None)
    return Cipher(key, recipe.trainer.encrypt_checkpoints,
                  hint=f"set {ENV} (the same on every node) or trainer.checkpoint_key_file "
                       f"to the key, 32 random bytes in base64 ({MAKE_ONE})")
