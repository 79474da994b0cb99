"""LaunchPlan: one value, two renderings (LaunchConfig and the torchrun line) that agree."""

import shlex
from pathlib import Path

import pytest

from elasticml.errors import UserError
from elasticml.launch.job import TrainRequest, compile_request, dry_run_text
from elasticml.launch.plan import plan_launch
from elasticml.recipe.load import load_recipe

DIGITS = Path(__file__).resolve().parents[2] / "recipes" / "digits.yaml"


def plan_for(*overrides: str):
    return plan_launch(load_recipe(DIGITS, list(overrides)), DIGITS, list(overrides))


def test_single_node_uses_a_private_local_store():
    plan = plan_for()
    assert (plan.min_nodes, plan.max_nodes, plan.nproc_per_node) == (1, 1, 2)
    assert plan.rdzv_endpoint == "127.0.0.1:0"
    assert plan.rdzv_backend == "elasticml-c10d"


def test_environment_sets_explicit_threads_and_identical_workers():
    plan = plan_for("trainer.threads=3")
    assert plan.env == {"OMP_NUM_THREADS": "3", "TORCH_ELASTIC_WORKER_IDENTICAL": "1"}
    assert plan.rdzv_configs["nproc_per_node"] == "2", "the rendezvous refuses a node that differs"


def test_the_job_key_file_is_passed_by_path_and_the_key_never_shows(tmp_path):
    key_file = tmp_path / "job.key"
    key_file.write_text("s3cret-key-value-0123456789abcdef\n")
    plan = plan_for(f"elastic.rdzv.job_key_file={key_file}")
    assert plan.rdzv_configs["job_key_file"] == str(key_file)
    assert "s3cret" not in plan.torchrun_command() and "s3cret" not in repr(plan)


def test_fast_rendezvous_timings_reach_both_renderings():
    plan = plan_for("elastic.rdzv.last_call=0.5", "elastic.rdzv.regroup_wait=0.2")
    assert plan.rdzv_configs["last_call_timeout"] == "0.5"
    assert plan.rdzv_configs["regroup_wait"] == "0.2"
    config = plan.to_launch_config()
    assert config.rdzv_configs["last_call_timeout"] == "0.5"
    assert "last_call_timeout=0.5" in plan.torchrun_command()


def test_torchrun_line_matches_the_launch_config():
    overrides = ["elastic.nnodes=1:3", "elastic.rdzv.endpoint=10.0.0.1:29400",
                 "trainer.max_steps=9"]
    plan = plan_for(*overrides)
    config = plan.to_launch_config()
    words = shlex.split(plan.torchrun_command())
    env = dict(w.split("=", 1) for w in words[: words.index("torchrun")])
    flags = dict(w[2:].split("=", 1) for w in words if w.startswith("--") and "=" in w)
    assert env == plan.env
    assert flags["nnodes"] == f"{config.min_nodes}:{config.max_nodes}" == "1:3"
    assert int(flags["nproc-per-node"]) == config.nproc_per_node
    assert flags["rdzv-backend"] == config.rdzv_backend
    assert flags["rdzv-endpoint"] == config.rdzv_endpoint
    assert flags["rdzv-id"] == config.run_id == "digits"
    assert int(flags["max-restarts"]) == config.max_restarts
    conf = dict(kv.split("=") for kv in flags["rdzv-conf"].split(","))
    assert {k: str(v) for k, v in config.rdzv_configs.items() if k != "timeout"} == conf
    module = words.index("-m")
    assert words[module + 1] == "elasticml.train.worker"
    assert words[module + 2:] == [str(DIGITS), "--training-hash", plan.training_hash,
                                  *overrides]


def test_multi_node_needs_an_endpoint():
    with pytest.raises(ValueError, match="needs a rendezvous endpoint"):
        plan_for("elastic.nnodes=1:2")


def test_dry_run_shows_batch_plan_for_every_world_size():
    request = TrainRequest(str(DIGITS), ["trainer.global_batch_size=10"],
                           {"nnodes": "1:3", "rdzv_endpoint": "127.0.0.1:1234"})
    recipe, plan = compile_request(request)
    text = dry_run_text(recipe, plan)
    assert [bp.world_size for bp in plan.batch_plans] == [2, 4, 6]
    assert "world   6: global 10, per rank 2/1" in text
    assert "torchrun --nnodes=1:3" in text


def test_unservable_range_is_refused_at_compile_time():
    request = TrainRequest(str(DIGITS), ["trainer.global_batch_size=4"],
                           {"nnodes": "1:3", "rdzv_endpoint": "127.0.0.1:1234"})
    with pytest.raises(UserError, match="smaller than the world size 6"):
        compile_request(request)


def test_workers_are_told_the_training_hash_the_job_started_with():
    from elasticml.recipe.load import training_hash

    plan = plan_for("trainer.max_steps=9")
    expected = training_hash(load_recipe(DIGITS, ["trainer.max_steps=9"]))
    args = plan.worker_command()
    at = args.index("--training-hash")
    assert args[at + 1] == expected and args[at - 1] == str(DIGITS.resolve())
    assert f"--training-hash {expected}" in plan.torchrun_command()
    assert args[-1] == "trainer.max_steps=9"


def test_elasticml_s_own_launch_runs_the_recipe_pinned_in_the_run_dir(tmp_path):
    from elasticml.launch.job import pin_recipe
    from elasticml.rundir import RunDir

    recipe = load_recipe(DIGITS, ["trainer.max_steps=9", f"run.dir={tmp_path}"])
    plan = plan_launch(recipe, DIGITS, ["trainer.max_steps=9", f"run.dir={tmp_path}"])
    run_dir = RunDir(plan.run_dir).create()
    pinned_path = pin_recipe(run_dir, recipe)
    assert pinned_path.parent.parent == run_dir.path and pinned_path.is_file()
    assert pin_recipe(run_dir, recipe) == pinned_path, "content-addressed: written once"
    pinned = plan.pinned(pinned_path)
    args = pinned.worker_command()
    assert args[args.index("-m") + 2:] == [str(pinned_path), "--training-hash",
                                           plan.training_hash]
    from elasticml.recipe.load import recipe_to_dict, training_hash

    again = load_recipe(pinned_path)
    assert recipe_to_dict(again) == recipe_to_dict(recipe)
    assert training_hash(again) == plan.training_hash
