"""Recipe loading: merge order, types, and one clear line for every kind of bad input."""

import os
from pathlib import Path

import pytest
import yaml

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


def test_training_hash_lets_the_length_of_training_change():
    """`raise trainer.max_steps to train on` must resume the same run, not refuse it."""
    base = training_hash(load_recipe(DIGITS))
    for volatile in ("trainer.max_steps=5000", "trainer.async_checkpoint=false",
                     "trainer.checkpoint_every=7", "trainer.keep_checkpoints=9",
                     "trainer.micro_batch_size=8", "faults.step_delay=0.5"):
        assert training_hash(load_recipe(DIGITS, [volatile])) == base, volatile
    for maths in ("run.seed=1", "trainer.global_batch_size=32", "trainer.batch_policy=linear",
                  "schedule.warmup_steps=3", "model.dropout=0.5"):
        assert training_hash(load_recipe(DIGITS, [maths])) != base, maths


def _custom_recipe(tmp_path, data: Path, code: Path | None = None):
    """A recipe file beside `data` (and a model module of the user's own, `code`)."""
    model = {"_target_": f"{code.stem}.Net"} if code else {"name": "mlp"}
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"task": {"name": "custom", "path": data.name},
                                      "model": model, "trainer": {"max_steps": 1}}))
    return load_recipe(recipe)


def test_training_hash_covers_the_bytes_of_the_files_the_recipe_names(tmp_path):
    data, code = tmp_path / "t.csv", tmp_path / f"hashed_net_{os.getpid()}.py"
    data.write_text("1,2,0\n3,4,1\n")
    code.write_text("def make(info):\n    return None\n")
    base = training_hash(_custom_recipe(tmp_path, data, code))
    assert training_hash(_custom_recipe(tmp_path, data, code)) == base
    data.write_text("1,2,0\n3,5,1\n")
    changed_data = training_hash(_custom_recipe(tmp_path, data, code))
    assert changed_data != base
    code.write_text("def make(info):\n    return 1\n")
    assert training_hash(_custom_recipe(tmp_path, data, code)) != changed_data


def test_training_hash_samples_a_huge_file_instead_of_reading_it_all(tmp_path, monkeypatch):
    import elasticml.recipe.load as load

    monkeypatch.setattr(load, "WHOLE_FILE_LIMIT", 4096)
    monkeypatch.setattr(load, "SAMPLE_BYTES", 512)
    data = tmp_path / "big.csv"
    rows = "".join(f"{i},{i},{i % 2}\n" for i in range(2000))
    data.write_text(rows)
    base = training_hash(_custom_recipe(tmp_path, data))
    data.write_text(rows[:-6] + "9,9,1\n")  # the tail changed: seen
    assert training_hash(_custom_recipe(tmp_path, data)) != base
    data.write_text(rows + "5,5,1\n")  # grown: the size is part of the fingerprint
    assert training_hash(_custom_recipe(tmp_path, data)) != base
