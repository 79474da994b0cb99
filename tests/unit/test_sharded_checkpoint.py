"""Sharded checkpoints on a one-rank group: atomic, verified, loaded without running code."""

from __future__ import annotations

import os
import pickle
import shutil

import pytest
import torch
import torch.distributed as dist

from elasticml.train.checkpoint import CorruptCheckpoint, is_sharded_checkpoint
from elasticml.train.sharded_checkpoint import (
    NOTHING,
    ShardedCheckpoints,
    Unwritable,
    read_metadata,
    read_sharded,
    read_whole_model,
    verify,
)
from elasticml.train.sharding import Layout, blocks, distribute


@pytest.fixture(scope="module")
def group(tmp_path_factory):
    store = tmp_path_factory.mktemp("store") / "file"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _trained(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    distribute(model, Layout("fsdp", (1,), ("shard",)), torch.device("cpu"), "fp32")
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    for _ in range(2):
        model(torch.randn(4, 6)).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    return model, optimizer


def _whole(model) -> dict:
    return {k: v.full_tensor().clone() for k, v in model.state_dict().items()}


def _saved(folder, steps=(10, 20)):
    model, optimizer = _trained()
    manager = ShardedCheckpoints(folder, keep=3, warn=lambda message: None)
    announced = []
    for step in steps:
        manager.save(model, optimizer, {"step": step}, step, background=step % 20 == 0,
                     on_durable=announced.append)
    manager.wait()
    return manager, model, optimizer, announced


def test_a_saved_step_loads_back_exactly_and_reads_as_one_plain_model(group, tmp_path):
    manager, model, optimizer, announced = _saved(tmp_path)
    assert manager.steps() == [10, 20] and [s.step for s in announced] == [10, 20]
    assert is_sharded_checkpoint(manager.path_for(20))
    assert not list(tmp_path.glob(".*tmp")), "no temporary folder is left"

    other, other_optimizer = _trained(seed=1)
    rest = manager.load(manager.path_for(20), other, other_optimizer)
    assert rest["step"] == 20
    for name, value in _whole(model).items():
        assert torch.equal(value, _whole(other)[name])
    assert other_optimizer.state_dict()["param_groups"] == optimizer.state_dict()["param_groups"]
    plain = read_whole_model(manager.path_for(20))
    assert all(torch.equal(plain[k], v) for k, v in _whole(model).items())
    assert read_sharded(manager.path_for(20))["step"] == 20


@pytest.mark.parametrize("damage", ["truncate", "flip", "no-state", "no-digest", "no-index"])
def test_a_damaged_newest_checkpoint_is_skipped_for_the_one_before(group, tmp_path, damage):
    manager, *_ = _saved(tmp_path)
    newest = manager.path_for(20)
    shard = next(newest.glob("__0_*.distcp"))
    if damage == "truncate":
        os.truncate(shard, shard.stat().st_size // 2)
    elif damage == "flip":
        data = bytearray(shard.read_bytes())
        data[len(data) // 2] ^= 0xFF
        shard.write_bytes(bytes(data))
    elif damage == "no-state":
        (newest / "state.pt").unlink()
    elif damage == "no-digest":
        (newest / "__0.sha256").unlink()
    else:
        (newest / ".metadata").unlink()
    warnings = []
    manager.warn = warnings.append
    with pytest.raises(CorruptCheckpoint):
        verify(newest)
    assert manager.newest() == 10
    assert "step-20.dcp" in warnings[0] and "falling back" in warnings[0]
    # set aside, so that step 20 can be saved again
    assert manager.steps() == [10] and (tmp_path / "step-20.dcp.corrupt").is_dir()


def test_an_index_that_would_run_code_is_refused_without_running_it(group, tmp_path):
    manager, *_ = _saved(tmp_path)
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (manager.path_for(20) / ".metadata").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(CorruptCheckpoint, match="not part of a checkpoint index"):
        read_metadata(manager.path_for(20))
    assert manager.newest() == 10 and not marker.exists()


def test_a_save_cut_off_leaves_no_checkpoint_and_its_folder_is_cleared(group, tmp_path):
    manager, *_ = _saved(tmp_path, steps=(10,))
    cut = tmp_path / f".step-20.dcp.{manager.token}-0.tmp"
    shutil.copytree(manager.path_for(10), cut)
    (cut / "state.pt").unlink()
    assert manager.steps() == [10]
    manager.remove_leftovers()
    assert not cut.exists()


def test_best_is_replaced_whole_and_a_replacement_cut_off_is_put_back(group, tmp_path):
    model, optimizer = _trained()
    manager = ShardedCheckpoints(tmp_path, warn=lambda message: None)
    best = {"metric": "loss", "value": 1.0, "step": 5}
    manager.save(model, optimizer, {"step": 5, "best": best}, 5, name="best.dcp")
    better = {"metric": "loss", "value": 0.5, "step": 9}
    manager.save(model, optimizer, {"step": 9, "best": better}, 9, name="best.dcp")
    assert manager.best_on_disk() == better
    assert manager.read_best(better)["model"].keys() == _whole(model).keys()
    assert manager.read_best(best) is None
    os.replace(tmp_path / "best.dcp", tmp_path / ".best.dcp.old")  # cut off mid-replacement
    manager.remove_leftovers()
    assert manager.best_on_disk() == better


def test_only_old_checkpoints_beyond_keep_are_pruned(group, tmp_path):
    model, optimizer = _trained()
    manager = ShardedCheckpoints(tmp_path, keep=2, warn=lambda message: None)
    for step in (1, 2, 3):
        manager.save(model, optimizer, {"step": step}, step)
    assert manager.steps() == [2, 3]
    assert manager.agree_on_newest(torch.device("cpu")) == 3


def test_an_empty_folder_has_no_newest(group, tmp_path):
    manager = ShardedCheckpoints(tmp_path / "none", warn=lambda message: None)
    assert manager.newest() == NOTHING and manager.best_on_disk() is None


def test_the_blocks_are_the_members_of_the_models_containers():
    inner = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU())
    model = torch.nn.Module()
    model.layers = torch.nn.ModuleList([inner, torch.nn.Linear(2, 2)])
    model.head = torch.nn.Linear(2, 1)
    assert blocks(model) == [inner, model.layers[1]]
    flat = torch.nn.Module()
    flat.a, flat.b, flat.act = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2), torch.nn.ReLU()
    assert blocks(flat) == [flat.a, flat.b]


def test_a_write_slower_than_half_the_stop_grace_is_warned_about_once(group, tmp_path):
    model, optimizer = _trained()
    warnings = []
    manager = ShardedCheckpoints(tmp_path, warn=warnings.append, grace_s=1e-9)
    for step in (1, 2):
        manager.save(model, optimizer, {"step": step}, step)
    assert len(warnings) == 1 and "step-1.dcp took" in warnings[0]


def test_a_folder_rank_zero_cannot_write_into_is_named_with_the_reason(group, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    manager = ShardedCheckpoints(blocker / "checkpoints", warn=lambda message: None)
    with pytest.raises(Unwritable, match="cannot write into the checkpoint folder"):
        manager.check_shared(torch.device("cpu"))
    ShardedCheckpoints(tmp_path / "fine", warn=lambda message: None).check_shared(
        torch.device("cpu"))
