"""`_target_` components: instantiate (nested, partial, args, alias), where code is imported
from, and every error a recipe can cause, each one line naming the recipe key."""

import functools

import pytest
import torch

from elasticml.components import Code, check, instantiate
from elasticml.errors import UserError


def build(config, *args, code=None, **kwargs):
    return instantiate(config, *args, key="model", code=code, **kwargs)


def test_nested_components_are_built_first_lists_included():
    made = build({"_target_": "torch.nn.Sequential",
                  "_args_": [{"_target_": "torch.nn.Linear", "in_features": 3,
                              "out_features": 2},
                             {"_component_": "torch.nn.ReLU"}]})
    assert isinstance(made[0], torch.nn.Linear) and isinstance(made[1], torch.nn.ReLU)
    made = build({"_target_": "torch.nn.ModuleList",
                  "modules": [{"_target_": "torch.nn.Identity"}] * 2})
    assert len(made) == 2


def test_partial_and_call_site_arguments_come_first():
    params = [torch.nn.Parameter(torch.zeros(2))]
    partial = build({"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.5})
    assert isinstance(partial, functools.partial)
    assert partial(params).param_groups[0]["lr"] == 0.5
    optimizer = build({"_target_": "torch.optim.SGD", "lr": 0.1}, params)
    assert isinstance(optimizer, torch.optim.SGD)
    made = build({"_target_": "torch.nn.Linear", "_args_": [3]}, 4)
    assert (made.in_features, made.out_features) == (4, 3)
    made = build({"_target_": "torch.nn.Linear", "_args_": [4, 3]}, bias=False)
    assert made.bias is None


def test_omegaconf_nodes_are_accepted():
    from omegaconf import OmegaConf

    config = OmegaConf.create({"width": 5, "m": {"_target_": "torch.nn.Linear",
                                                 "in_features": "${width}", "out_features": 1}})
    assert build(config.m).in_features == 5


def test_user_code_comes_from_the_recipe_folder_never_the_current_directory(tmp_path,
                                                                             monkeypatch):
    here, there = tmp_path / "cwd", tmp_path / "recipe"
    here.mkdir(), there.mkdir()
    (here / "cwd_only_mod.py").write_text("import torch\nclass Net(torch.nn.Linear): pass\n")
    (there / "beside_mod.py").write_text(
        "import torch\nclass Net(torch.nn.Module):\n"
        "    def __init__(self, root):\n        super().__init__(); self.root = root\n")
    (there / "data").mkdir()
    monkeypatch.chdir(here)
    monkeypatch.syspath_prepend(str(here))  # what `python -m` does with the current directory
    monkeypatch.delenv("PYTHONPATH", raising=False)
    with pytest.raises(UserError, match=r"^model._target_: cannot import cwd_only_mod.Net: no "
                                        r"module 'cwd_only_mod'.*PYTHONPATH"):
        build({"_target_": "cwd_only_mod.Net"}, code=Code(there))
    made = build({"_target_": "beside_mod.Net", "root": "data"}, code=Code(there))
    assert made.root == str(there / "data")  # a relative path resolves against the recipe
    assert build({"_target_": "beside_mod.Net", "root": "nowhere"}, code=Code(there)).root \
        == "nowhere"


@pytest.mark.parametrize(("config", "message"), [
    ({"_target_": "torch.nn.Linear", "in_featurez": 3, "out_features": 2},
     r"^model: Linear takes no argument 'in_featurez' \(it takes: "
     r"in_features, out_features"),
    ({"_target_": "torch.nn.Linear"}, r"^model: Linear missing a required argument"),
    ({"_target_": "torch.nn.NoSuchLayer"}, r"^model._target_: torch.nn has no 'NoSuchLayer'"),
    ({"_target_": "not a path"}, r"^model._target_: 'not a path' is not a dotted path"),
    ({"_target_": "nowhere_at_all_pkg.Net"}, r"^model._target_: cannot import "
                                             r"nowhere_at_all_pkg.Net: no module"),
    ({"width": 3}, r"^model: needs a _target_"),
    ({"_target_": "torch.nn.Linear", "in_features": -1, "out_features": 2},
     r"^model: torch.nn.Linear\(...\) failed: RuntimeError: .* \(at .*\.py:\d+\)$"),
])
def test_errors_are_one_line_naming_the_key(config, message):
    with pytest.raises(UserError, match=message) as caught:
        build(config)
    assert "\n" not in str(caught.value)


def test_a_module_that_fails_to_import_says_why(tmp_path):
    (tmp_path / "broken_mod.py").write_text("import not_installed_anywhere\n")
    with pytest.raises(UserError, match=r"cannot import broken_mod.Net: ModuleNotFoundError: "
                                        r"No module named 'not_installed_anywhere'"):
        build({"_target_": "broken_mod.Net"}, code=Code(tmp_path))


def test_trusted_only_builds_no_foreign_code_and_no_functions(tmp_path):
    marker = tmp_path / "ran"
    (tmp_path / "evil_mod.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    code = Code(tmp_path, trusted_only=True, refusal="needs --trust-code")
    with pytest.raises(UserError, match=r"model._target_: evil_mod.x needs --trust-code"):
        build({"_target_": "evil_mod.x"}, code=code)
    assert not marker.exists(), "the module was not even imported"
    with pytest.raises(UserError, match="needs --trust-code"):
        build({"_target_": "torch.hub.load", "_args_": ["a", "b"]}, code=code)
    with pytest.raises(UserError, match="needs --trust-code"):
        build({"_target_": "elasticml.components.instantiate"}, code=code)
    assert isinstance(build({"_target_": "torch.nn.Linear", "_args_": [2, 2]}, code=code),
                      torch.nn.Linear)


def test_check_finds_kinds_and_signatures_without_building():
    code = Code()
    check({"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 0.1}, "optimizer", code,
          runtime_args=1, kind=torch.optim.Optimizer)
    with pytest.raises(UserError, match=r"^model._target_: torch.nn.MSELoss is not a Module"):
        check({"_target_": "torch.nn.MSELoss"}, "model", code, kind=torch.optim.Optimizer,
              what="a Module")
    with pytest.raises(UserError, match=r"^optimizer: AdamW takes no argument 'learning_rate'"):
        check({"_target_": "torch.optim.AdamW", "learning_rate": 0.1}, "optimizer", code,
              runtime_args=1)
    with pytest.raises(UserError, match=r"^model.inner._target_: cannot import"):
        check({"_target_": "torch.nn.Sequential", "inner": {"_target_": "nope_pkg.X"}},
              "model", code)
