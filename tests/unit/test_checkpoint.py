"""Checkpoints: atomic writes, checksums, weights_only loading, fallback past corrupt files."""

import os

import pytest
import torch

from elasticml.errors import UserError
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


def test_a_background_save_is_announced_once_the_file_is_on_disk(tmp_path):
    manager = CheckpointManager(tmp_path)
    seen = []

    def announce(saved):
        seen.append((saved.path.is_file(), saved.step, saved.write_s))

    saved = manager.save(state(7), 7, background=True, on_durable=announce)
    manager.wait()
    [(on_disk, step, write_s)] = seen
    assert on_disk and step == 7 and write_s is not None and write_s >= 0
    assert saved.stall_s >= 0


def test_a_synchronous_save_is_announced_with_the_whole_stall(tmp_path):
    manager = CheckpointManager(tmp_path)
    seen = []
    manager.save(state(8), 8, on_durable=seen.append)
    [saved] = seen
    assert saved.path.is_file() and saved.stall_s >= saved.write_s > 0
    assert manager.save_once(state(9), 9, on_durable=seen.append) is seen[-1]
    assert seen[-1].stall_s >= seen[-1].write_s > 0


def test_a_failed_background_save_is_never_announced(tmp_path):
    (tmp_path / "blocker").write_text("a file where the folder should be")
    manager = CheckpointManager(tmp_path / "blocker" / "checkpoints")
    seen = []
    manager.save(state(3), 3, background=True, on_durable=seen.append)
    with pytest.raises(OSError):
        manager.wait()
    assert seen == []


def test_one_writer_per_folder_for_the_state_of_a_step(tmp_path):
    """Every local rank of a node tries to save the same last completed step at once: the
    first to take the folder's lock writes it, the others find the file and skip."""
    import threading

    start = threading.Barrier(4)
    outcomes = []

    def rank():
        manager = CheckpointManager(tmp_path)  # one per worker process, same folder
        start.wait()
        outcomes.append(manager.save_once(state(12), 12))

    threads = [threading.Thread(target=rank) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    written = [o for o in outcomes if o is not None]
    assert len(written) == 1 and written[0].path.name == "step-12.pt"
    assert read_checkpoint(tmp_path / "step-12.pt")["step"] == 12


def test_a_write_that_takes_more_than_half_the_stop_grace_is_warned_about_once(tmp_path,
                                                                                monkeypatch):
    from elasticml.train.checkpoint import stop_grace_s

    monkeypatch.setenv("ELASTICML_STOP_GRACE", "0.000001")
    warnings_seen = []
    manager = CheckpointManager(tmp_path, warn=warnings_seen.append, grace_s=stop_grace_s())
    manager.save(state(1), 1)
    manager.save(state(2), 2, background=True)
    manager.wait()
    [message] = warnings_seen
    assert "ELASTICML_STOP_GRACE" in message and "elastic.stop_grace" in message
    assert "faster disk" in message


def test_without_the_variable_the_stop_grace_is_thirty_seconds(monkeypatch):
    from elasticml.train.checkpoint import stop_grace_s

    monkeypatch.delenv("ELASTICML_STOP_GRACE", raising=False)
    assert stop_grace_s() == 30.0
    monkeypatch.setenv("ELASTICML_STOP_GRACE", "12.5")
    assert stop_grace_s() == 12.5
    monkeypatch.setenv("ELASTICML_STOP_GRACE", "soon")
    with pytest.raises(UserError, match="ELASTICML_STOP_GRACE='soon' is not a number"):
        stop_grace_s()


def test_the_best_record_is_read_without_loading_best_pt_and_checked_against_it(tmp_path):
    manager = CheckpointManager(tmp_path)
    assert manager.best_on_disk() is None
    best = {"metric": "accuracy", "value": 0.9, "step": 20}
    manager.save({**state(20), "best": best}, 20, name="best.pt")
    assert manager.best_on_disk() == best
    # best.pt replaced behind the record's back (a crash between the two writes): the record
    # no longer matches the file, so the file itself is read
    newer = {"metric": "accuracy", "value": 0.95, "step": 30}
    from elasticml.train.checkpoint import encode, write_atomically

    write_atomically(tmp_path / "best.pt", encode({**state(30), "best": newer}))
    assert manager.best_on_disk() == newer
