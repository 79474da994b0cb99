"""Checkpoints: atomic writes, checksums, weights_only loading, fallback past corrupt files."""

import os

import pytest
import torch

from elasticml.train.checkpoint import CheckpointManager, CorruptCheckpoint, read_checkpoint


def state(step: int) -> dict:
    return {"step": step, "model": {"w": torch.full((3,), float(step))}, "recipe": {"a": [1, None]}}


def test_round_trip_and_keep_last_k(tmp_path):
    manager = CheckpointManager(tmp_path, keep=2)
    for step in (10, 20, 30):
        manager.save(state(step), step)
    assert manager.steps() == [20, 30]
    step, loaded = manager.newest()
    assert step == 30 and torch.equal(loaded["model"]["w"], torch.full((3,), 30.0))


def test_background_save_snapshots_the_state(tmp_path):
    manager = CheckpointManager(tmp_path)
    live = state(5)
    manager.save(live, 5, background=True)
    live["model"]["w"].add_(100)  # training goes on while the file is written
    manager.wait()
    assert read_checkpoint(manager.path_for(5))["model"]["w"][0] == 5.0


def test_truncated_newest_falls_back_with_a_warning(tmp_path):
    manager = CheckpointManager(tmp_path)
    manager.save(state(1), 1)
    manager.save(state(2), 2)
    newest = manager.path_for(2)
    newest.write_bytes(newest.read_bytes()[:-100])
    with pytest.warns(UserWarning, match="step-2.pt"):
        step, _ = manager.newest()
    assert step == 1


def test_flipped_byte_is_detected(tmp_path):
    manager = CheckpointManager(tmp_path)
    path = manager.save(state(1), 1).path
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(CorruptCheckpoint, match="checksum mismatch"):
        read_checkpoint(path)


def test_foreign_file_is_refused(tmp_path):
    path = tmp_path / "step-1.pt"
    torch.save({"x": 1}, path)
    with pytest.raises(CorruptCheckpoint, match="not an elasticml checkpoint"):
        read_checkpoint(path)


def test_code_in_a_checkpoint_is_not_executed(tmp_path):
    import hashlib
    import io
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    payload = io.BytesIO()
    torch.save({"x": 1}, payload)  # a valid zip, then replace its pickle with a hostile one
    evil = pickle.dumps(Evil())
    blob = evil + b"EMLCKPT1" + hashlib.sha256(evil).hexdigest().encode()
    path = tmp_path / "step-9.pt"
    path.write_bytes(blob)
    with pytest.raises(CorruptCheckpoint):
        read_checkpoint(path)
    assert not (tmp_path / "pwned").exists()


def test_a_crash_mid_write_leaves_the_old_files_intact(tmp_path):
    manager = CheckpointManager(tmp_path)
    manager.save(state(1), 1)
    (tmp_path / ".step-2.pt.123.tmp").write_bytes(b"half written")  # killed before rename
    assert manager.steps() == [1]
    assert manager.newest()[0] == 1
