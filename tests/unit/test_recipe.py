"""Recipe loading: merge order, types, and one clear line for every kind of bad input."""

from pathlib import Path

import pytest

from elasticml.errors import UserError
from elasticml.recipe.load import load_recipe, training_hash

DIGITS = Path(__file__).resolve().parents[2] / "recipes" / "digits.yaml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_file_overrides_and_flags_merge_in_order():
    recipe = load_recipe(DIGITS, ["trainer.max_steps=7", "elastic.nnodes=1:3"],
                         {"elastic.nnodes": "2:4"})
    assert recipe.trainer.max_steps == 7
    assert recipe.elastic.nnodes == "2:4"
    assert recipe.model.name == "cnn"


def test_min_max_nodes_stays_a_string_in_yaml(tmp_path):
    # YAML 1.1 reads 1:2 as the base-60 integer 62; a recipe must not.
    recipe = load_recipe(write(tmp_path, "trainer: {max_steps: 1}\nelastic:\n  nnodes: 1:2\n"))
    assert recipe.elastic.nnodes == "1:2"
    assert load_recipe(DIGITS, ["elastic.nnodes=1:2"]).elastic.nnodes == "1:2"


def test_bundled_name_finds_the_recipe():
    assert load_recipe("digits").run.name == "digits"


def test_run_id_defaults_to_the_name():
    assert load_recipe(DIGITS).run_id == "digits"
    assert load_recipe(DIGITS, ["run.id=other"]).run_id == "other"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["trainer.foo=1"], "trainer.foo: unknown key"),
        (["trainer.max_steps=abc"], "trainer.max_steps: 'abc' is not a valid integer"),
        (["elastic.nnodes=3:1"], "elastic.nnodes: '3:1': MIN is larger than MAX"),
        (["elastic.nnodes=a:b"], "elastic.nnodes: 'a:b' is not N or MIN:MAX"),
        (["elastic.nnodes=0"], "elastic.nnodes: '0': at least 1 node"),
        (["model.name=resnet"], "model.name: unknown model 'resnet'"),
        (["task.name=imagenet"], "task.name: unknown task 'imagenet'"),
        (["optimizer.name=lamb"], "optimizer.name: 'lamb' is not one of"),
        (["optimizer.lr=-1"], "optimizer.lr: must be > 0"),
        (["trainer.epochs=2"], "set exactly one of trainer.max_steps and trainer.epochs"),
        (["elastic.rdzv.endpoint=nohost"], "elastic.rdzv.endpoint: 'nohost' is not HOST:PORT"),
        (["trainer.max_steps"], "is not key=value"),
        (["run.id=a b"], "run.id: 'a b' must be letters"),
    ],
)
def test_bad_overrides_name_the_key(overrides, expected):
    with pytest.raises(UserError) as caught:
        load_recipe(DIGITS, overrides)
    message = str(caught.value)
    assert expected in message
    assert "\n" not in message


def test_bad_key_in_file_names_file_and_line(tmp_path):
    path = write(tmp_path, "run:\n  name: x\ntrainer:\n  max_steps: 5\n  max_stepz: 3\n")
    with pytest.raises(UserError, match=r"recipe.yaml:5: trainer.max_stepz: unknown key"):
        load_recipe(path)


def test_wrong_type_in_file_names_line(tmp_path):
    path = write(tmp_path, "trainer:\n  max_steps: lots\n")
    with pytest.raises(UserError, match=r"recipe.yaml:2: trainer.max_steps: 'lots' is not a valid"):
        load_recipe(path)


def test_malformed_yaml(tmp_path):
    path = write(tmp_path, "trainer:\n  max_steps: [1\n")
    with pytest.raises(UserError, match=r"recipe.yaml:3: malformed YAML"):
        load_recipe(path)


def test_not_a_mapping(tmp_path):
    with pytest.raises(UserError, match="a recipe is a YAML mapping"):
        load_recipe(write(tmp_path, "- a\n- b\n"))


def test_missing_file():
    with pytest.raises(UserError, match="recipe file not found: nope.yaml"):
        load_recipe("nope.yaml")


def test_missing_data_file():
    recipe = {"task": {"name": "custom", "path": "/no/such.csv"}, "model": {"name": "mlp"},
              "trainer": {"max_steps": 1}}
    with pytest.raises(UserError, match="task.path: data file not found: /no/such.csv"):
        load_recipe(recipe)


def test_keys_of_another_variant_are_unknown():
    with pytest.raises(UserError, match="model.channels: unknown key"):
        load_recipe(DIGITS, ["model.name=mlp"])


def test_training_hash_ignores_logging_but_not_maths():
    base = training_hash(load_recipe(DIGITS))
    assert training_hash(load_recipe(DIGITS, ["trainer.log_every=1"])) == base
    assert training_hash(load_recipe(DIGITS, ["elastic.nnodes=1:4"])) == base
    assert training_hash(load_recipe(DIGITS, ["optimizer.lr=0.1"])) != base
