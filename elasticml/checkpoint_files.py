"""`elasticml checkpoints encrypt|decrypt`: a run's checkpoint files, encrypted or plain.

TARGET is a checkpoint file, a run directory or a checkpoints folder (its `step-N.pt` and
`best.pt`, with `best.json` kept in step). Each file is opened (with the key it is encrypted
with, if it is) and its checksum verified before anything is written; then it is written
encrypted under the key (`encrypt`; a file already encrypted is re-encrypted, under another key
with `--from-key-file`) or plain (`decrypt`: what a run without encryption writes, for export).
Nothing is unpickled and torch is not imported.

The result goes to `-o OUT` (a file, or a folder for several files), leaving the originals as
they were, or with `--in-place` replaces each file, under the checkpoint folder's lock so that
a trainer writing there at the same moment never interleaves with it. Every write is atomic
(`write_atomically`). Keys are checked for every file before the first write, so a wrong key
changes nothing; a file that fails its checksum or does not authenticate is left alone and
named, and the command exits 1.

The key, first found: `--key-file`, `$ELASTICML_CHECKPOINT_KEY`, then the
`trainer.checkpoint_key_file` of the run's own `recipe.yaml` (`cipher_for`, which
`elasticml eval` uses too).
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path

from elasticml.errors import UserError
from elasticml.train.checkpoint import (
    BEST,
    BEST_RECORD,
    CheckpointManager,
    CorruptCheckpoint,
    fingerprint,
    read_bytes,
    verified,
    write_atomically,
    write_best_record,
)
from elasticml.train.encryption import (
    ENV,
    HEADER,
    CheckpointKey,
    CheckpointKeyError,
    Cipher,
    encrypt,
    is_encrypted,
    read_checkpoint_key,
)

KEY_HINT = f"set {ENV} to the key it was written with, or pass --key-file FILE"


@dataclass
class Conversion:
    target: str
    encrypt: bool
    """True: `encrypt` (or re-encrypt); False: `decrypt`."""
    output: str | None = None
    in_place: bool = False
    key_file: str | None = None
    from_key_file: str | None = None
    """`encrypt` only: the key the files are encrypted with now (default: the key found in
    the environment or the run's recipe, else the new key)."""


def cipher_for(target: Path, key_file: str | None) -> Cipher:
    """The cipher a command uses to read `target`: the key from `key_file`, the environment,
    or the recipe of the run `target` belongs to. Never encrypts."""
    key = read_checkpoint_key(key_file, file_first=True) or _run_recipe_key(target)
    return Cipher(key, False, KEY_HINT)


def convert(request: Conversion) -> int:
    """The whole command; returns the exit status (1 when a file had to be left out)."""
    source = Path(request.target).expanduser()
    if not source.exists():
        raise UserError(f"not found: {request.target}")
    if request.in_place == (request.output is not None):
        raise UserError("say where the result goes: -o OUT (the originals stay as they are) or "
                        "--in-place (replaces them)")
    folder, files = _files_of(source)
    if not files:
        raise UserError(f"{request.target}: no checkpoint files (step-N.pt, best.pt) in it")
    key = None
    if request.encrypt:
        key = cipher_for(source, request.key_file).key
        if key is None:
            raise CheckpointKeyError(f"no key to encrypt with: set {ENV} or pass --key-file "
                                     "FILE (32 random bytes in base64: `openssl rand -base64 "
                                     "32`)")
    reader = cipher_for(source, request.from_key_file if request.encrypt else request.key_file)
    if reader.key is None and key is not None:
        reader = Cipher(key, False, KEY_HINT)
    for path in files:
        _check_key(path, reader)
    destination = _destination(source, files, request)
    skipped: list[str] = []
    lock = CheckpointManager(folder).locked() if request.in_place else contextlib.nullcontext()
    with lock:
        for path in files:
            try:
                original = read_bytes(path)
                plain = verified(original, str(path), reader)
            except CorruptCheckpoint as err:
                if len(files) == 1:
                    raise UserError(str(err)) from None
                skipped.append(str(err))
                continue
            blob = encrypt(key, plain) if key is not None else plain
            out = destination / path.name if destination.is_dir() else destination
            write_atomically(out, blob)
            if path.name == BEST and out.name == BEST:
                _carry_best_record(folder, original, out.parent, blob)
    done = len(files) - len(skipped)
    where = "in place" if request.in_place else f"into {destination}"
    verb = "encrypted" if request.encrypt else "decrypted"
    print(f"{verb} {done} checkpoint file{'s' if done != 1 else ''} {where}")
    for reason in skipped:
        print(f"left out {reason}", file=sys.stderr)
    return 1 if skipped else 0


def _files_of(source: Path) -> tuple[Path, list[Path]]:
    """(the folder, its checkpoint files: step-N.pt by step, then best.pt)."""
    if source.is_file():
        return source.parent, [source]
    folder = source / "checkpoints" if (source / "checkpoints").is_dir() else source
    manager = CheckpointManager(folder)
    files = [manager.path_for(step) for step in manager.steps()]
    return folder, files + ([folder / BEST] if (folder / BEST).is_file() else [])


def _destination(source: Path, files: list[Path], request: Conversion) -> Path:
    if request.in_place:
        return files[0] if source.is_file() else files[0].parent
    out = Path(request.output).expanduser()
    if source.is_file() and not out.is_dir():
        if out.resolve() == source.resolve():
            raise UserError("-o is the file itself: pass --in-place to replace it")
        out.parent.mkdir(parents=True, exist_ok=True)
        return out
    if out.exists() and not out.is_dir():
        raise UserError(f"-o {request.output}: not a folder, and there are several files")
    if out.resolve() == files[0].parent.resolve():
        raise UserError("-o is the checkpoint folder itself: pass --in-place to replace them")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _check_key(path: Path, reader: Cipher) -> None:
    """Refuse before anything is written when a file's key is missing or another one."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(HEADER.size)
    except OSError as err:
        raise UserError(f"{path}: {err.strerror}") from None
    if not is_encrypted(head):
        return
    if reader.key is None:
        raise CheckpointKeyError(f"{path} is encrypted and no checkpoint key was given: "
                                 f"{KEY_HINT}")
    if len(head) == HEADER.size and HEADER.unpack(head)[1] != reader.key.key_id:
        raise CheckpointKeyError(f"{path} is encrypted with another key than the one in "
                                 f"{reader.key.where}")


def _carry_best_record(folder: Path, original: bytes, out_folder: Path, blob: bytes) -> None:
    """`best.json` beside the written `best.pt`, naming its new bytes, when the record named
    the original ones (a stale record is not carried: a reader then reads best.pt itself)."""
    import json

    name, value = fingerprint(original[:8], original[-64:])
    try:
        record = json.loads((folder / BEST_RECORD).read_text())
        if record.get(name) != value:
            return
    except (OSError, ValueError, AttributeError):
        return
    write_best_record(out_folder, record.get("best"), blob)


def _run_recipe_key(target: Path) -> CheckpointKey | None:
    """The key `trainer.checkpoint_key_file` names in the recipe.yaml of the run `target`
    belongs to (a run dir, its checkpoints folder, or a file in it); None without one."""
    import yaml

    target = target.resolve()
    candidates = [target, target.parent, target.parent.parent]
    run = next((c for c in candidates if (c / "recipe.yaml").is_file()), None)
    if run is None:
        return None
    try:
        recipe = yaml.safe_load((run / "recipe.yaml").read_text()) or {}
        name = recipe["trainer"]["checkpoint_key_file"]
        recipe_dir = (recipe.get("run") or {}).get("recipe_dir")
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError):
        return None
    if not isinstance(name, str) or not name:
        return None
    path = Path(name).expanduser()
    if not path.is_absolute() and recipe_dir:
        path = Path(recipe_dir) / path
    return read_checkpoint_key(path, environ={})
