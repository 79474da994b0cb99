"""Encrypted checkpoints: AES-GCM in segments, authenticated, and a key that is never shown."""

import base64
import subprocess
import sys

import pytest
import torch

from elasticml.errors import UserError
from elasticml.train import encryption
from elasticml.train.checkpoint import (
    MAGIC,
    CheckpointManager,
    CorruptCheckpoint,
    encode,
    read_checkpoint,
)
from elasticml.train.encryption import (
    ENV,
    CheckpointKeyError,
    Cipher,
    decrypt,
    encrypt,
    parse_key,
    read_checkpoint_key,
)
from elasticml.train.recovery import open_state, pack_state
from tests.helpers import this_checkout_env

TEXT = base64.b64encode(bytes(range(32))).decode()
KEY = parse_key(TEXT, "test")
OTHER = parse_key(base64.b64encode(b"\x07" * 32).decode(), "other")
ON = Cipher(KEY, True, "give a key")
JOB_KEY = b"j" * 32


def state(step: int) -> dict:
    return {"step": step, "model": {"w": torch.full((64,), float(step))},
            "recipe": {"secret_recipe_marker": 1}, "best": None}


def test_round_trip_and_nothing_readable_on_disk(tmp_path):
    manager = CheckpointManager(tmp_path, cipher=ON)
    manager.save(state(3), 3)
    blob = manager.path_for(3).read_bytes()
    assert blob.startswith(b"EMLCKPE1")
    assert MAGIC not in blob and b"secret_recipe_marker" not in blob
    step, loaded = manager.newest()
    assert step == 3 and torch.equal(loaded["model"]["w"], torch.full((64,), 3.0))


@pytest.mark.parametrize("size", [0, 1, 99, 100, 101, 1000])
def test_many_segments_round_trip(monkeypatch, size):
    monkeypatch.setattr(encryption, "SEGMENT", 100)
    blob = bytes(i % 251 for i in range(size))
    assert decrypt(KEY, encrypt(KEY, blob), "x") == blob


def damaged(blob: bytes) -> dict[str, bytes]:
    body = len(blob) - encryption.HEADER.size
    sealed = encryption.SEGMENT + encryption.TAG_BYTES
    flipped = bytearray(blob)
    flipped[-20] ^= 0x01
    two = encryption.HEADER.size + sealed
    swapped = blob[:encryption.HEADER.size] + blob[two:two + sealed] + \
        blob[encryption.HEADER.size:two] + blob[two + sealed:]
    return {"flipped byte": bytes(flipped), "cut in a segment": blob[:-7],
            "cut at a segment boundary":
                blob[:encryption.HEADER.size + sealed * (body // sealed - 1)],
            "segments swapped": swapped, "header only": blob[:encryption.HEADER.size]}


@pytest.mark.parametrize("case", ["flipped byte", "cut in a segment", "cut at a segment boundary",
                                  "segments swapped", "header only"])
def test_damage_does_not_authenticate(monkeypatch, case):
    monkeypatch.setattr(encryption, "SEGMENT", 100)
    blob = encrypt(KEY, bytes(range(250)) * 2)  # 5 segments of 100
    with pytest.raises(CorruptCheckpoint):
        decrypt(KEY, damaged(blob)[case], "x")


def test_a_tampered_newest_falls_back_to_the_previous_with_a_warning(tmp_path):
    manager = CheckpointManager(tmp_path, cipher=ON)
    manager.save(state(1), 1)
    manager.save(state(2), 2)
    newest = bytearray(manager.path_for(2).read_bytes())
    newest[len(newest) // 2] ^= 0xFF
    manager.path_for(2).write_bytes(bytes(newest))
    with pytest.warns(UserWarning, match="step-2.pt.*does not authenticate"):
        step, _ = manager.newest()
    assert step == 1


@pytest.mark.parametrize("reader, message", [
    (Cipher(OTHER, True, "hint"), "encrypted with another key than the one in other"),
    (Cipher(None, False, "set the key"), "encrypted and no checkpoint key was given: set the key"),
], ids=["another key", "no key"])
def test_a_key_problem_is_a_user_error_not_damage(tmp_path, reader, message):
    CheckpointManager(tmp_path, cipher=ON).save(state(1), 1)
    with pytest.raises(CheckpointKeyError, match=message) as refused:
        CheckpointManager(tmp_path, cipher=reader).newest()
    assert isinstance(refused.value, UserError) and TEXT not in str(refused.value)


def test_a_plain_file_is_refused_while_encryption_is_on(tmp_path):
    CheckpointManager(tmp_path).save(state(1), 1)
    with pytest.raises(CheckpointKeyError, match="not encrypted.*checkpoints encrypt"):
        CheckpointManager(tmp_path, cipher=ON).newest()
    # with encryption off, a key still opens encrypted files (a run that turned it off)
    CheckpointManager(tmp_path, cipher=ON).save(state(2), 2)
    assert CheckpointManager(tmp_path, cipher=Cipher(KEY, False, "")).newest()[0] == 2


def test_encryption_on_without_a_key_is_refused():
    with pytest.raises(CheckpointKeyError, match="encrypt_checkpoints is on.*no checkpoint key"):
        Cipher(None, True, "set it")


def test_best_json_names_the_encrypted_best_pt(tmp_path):
    manager = CheckpointManager(tmp_path, cipher=ON)
    best = {"metric": "accuracy", "value": 0.5, "step": 4}
    manager.save({**state(4), "best": best}, 4, name="best.pt")
    assert manager.best_on_disk() == best
    assert manager.read_best(best)["best"] == best
    assert manager.read_best({**best, "step": 5}) is None
    # without the record the best is read from best.pt itself, which needs the key
    (tmp_path / "best.json").unlink()
    assert CheckpointManager(tmp_path, cipher=ON).best_on_disk() == best
    with pytest.raises(CheckpointKeyError):
        CheckpointManager(tmp_path).best_on_disk()


@pytest.mark.parametrize("text, found", [("not base64!", "is not base64"),
                                         (base64.b64encode(b"short").decode(), "decodes to 5")])
def test_a_malformed_key_is_named_but_never_shown(text, found):
    with pytest.raises(UserError, match=f"{ENV}.*{found}.*32 random bytes") as refused:
        read_checkpoint_key(None, environ={ENV: text})
    assert text not in str(refused.value)


def test_the_environment_wins_over_the_key_file_unless_the_file_is_named_on_a_command(
        tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text(base64.b64encode(b"\x07" * 32).decode() + "\n")
    env = {ENV: TEXT}
    assert read_checkpoint_key(key_file, environ=env).raw == KEY.raw
    assert read_checkpoint_key(key_file, environ=env, file_first=True).raw == OTHER.raw
    assert read_checkpoint_key(None, environ={}) is None
    with pytest.raises(UserError, match="cannot read"):
        read_checkpoint_key(tmp_path / "missing", environ={})
    assert TEXT not in repr(KEY)


def test_the_state_broadcast_is_encrypted_inside_the_job_key_seal():
    blob = pack_state(state(4), JOB_KEY, ON)
    assert b"secret_recipe_marker" not in blob and MAGIC not in blob
    assert open_state(blob, JOB_KEY, source=1, cipher=ON)["step"] == 4
    with pytest.raises(UserError, match="training state from rank 1.*another key"):
        open_state(blob, JOB_KEY, source=1, cipher=Cipher(OTHER, True, ""))
    with pytest.raises(UserError, match="training state from rank 1 is not encrypted"):
        open_state(pack_state(state(4), JOB_KEY), JOB_KEY, source=1, cipher=ON)


def test_an_encrypted_file_holds_the_plain_file_inside(tmp_path):
    """Decrypting gives back exactly the bytes a run without encryption writes."""
    plain = encode(state(7))
    path = tmp_path / "step-7.pt"
    path.write_bytes(ON.seal(plain))
    assert decrypt(KEY, path.read_bytes(), "x") == plain
    assert read_checkpoint(path, ON)["step"] == 7


def train(tmp_path, *args: str, key: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in this_checkout_env().items() if k != ENV}
    if key is not None:
        env[ENV] = key
    return subprocess.run([sys.executable, "-m", "elasticml", "train", "digits",
                           "--run-dir", str(tmp_path / "runs"), *args], capture_output=True,
                          text=True, env=env, cwd=tmp_path)


@pytest.mark.parametrize("key, found", [(None, "no checkpoint key: set " + ENV),
                                        ("c2hvcnQ=", "decodes to 5 bytes")],
                         ids=["missing", "malformed"])
def test_a_launch_with_encryption_and_no_good_key_is_one_line_before_anything(tmp_path, key,
                                                                              found):
    result = train(tmp_path, "trainer.encrypt_checkpoints=true", key=key)
    assert result.returncode == 2 and found in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists(), "nothing started, nothing written"
    assert (key or "\0") not in result.stderr


def test_the_dry_run_names_the_key_but_never_shows_it(tmp_path):
    key_file = tmp_path / "ckpt.key"
    key_file.write_text(TEXT + "\n")
    result = train(tmp_path, "trainer.encrypt_checkpoints=true", "--dry-run",
                   f"trainer.checkpoint_key_file={key_file}", key=TEXT)
    assert result.returncode == 0, result.stderr
    assert "checkpoint key in ELASTICML_CHECKPOINT_KEY (not shown)" in result.stdout
    assert f"checkpoint_key_file: {key_file}" in result.stdout
    assert TEXT not in result.stdout + result.stderr
