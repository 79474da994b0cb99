"""Every bundled recipe, subfolders included, loads and checks; the catalogue lists them all."""

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from elasticml.cli import app
from elasticml.components import Code
from elasticml.recipe.catalogue import bundled, description
from elasticml.recipe.load import find_recipe, load_recipe
from elasticml.tasks import build_task
from elasticml.tasks.own import build_model
from elasticml.tasks.validate import check_components

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "recipes").glob("**/*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(ROOT)))
def test_recipe_loads_and_is_documented(path):
    recipe = load_recipe(path)
    text = path.read_text()
    assert text.startswith("#"), "a recipe starts with a comment block that documents it"
    assert recipe.run.description and "\n" not in recipe.run.description



@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(ROOT)))
def test_recipe_models_have_no_batchnorm(path, request):
    """BatchNorm statistics depend on the per-rank batch: the maths would change with the
    world size."""
    recipe = load_recipe(path)
    if "fashion_mnist" in str(recipe.data.train):
        request.getfixturevalue("fashion_mnist")
    check_components(recipe)
    if recipe.own_data:  # the model alone: its datasets may need data not installed here
        model = build_model(recipe.model, Code(recipe.run.recipe_dir))
    else:
        if recipe.task.name == "movielens":
            request.getfixturevalue("movielens")
        model = build_task(recipe).build_model()
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_catalogue_lists_every_recipe_with_its_description():
    found = bundled()
    assert {p.stem for p in RECIPES} <= set(found)
    assert all(description(found[p.stem]) for p in RECIPES)
    result = CliRunner().invoke(app, ["recipes"])
    assert result.exit_code == 0
    for path in RECIPES:
        assert path.stem in result.output


@pytest.mark.parametrize("name", ["digits", "spirals", "byo/spirals", "spirals-csv.yaml",
                                  "recipes/custom/spirals-csv", "recipes/byo/spirals.yaml"])
def test_recipes_show_finds_names_and_subfolders(name):
    result = CliRunner().invoke(app, ["recipes", "show", name])
    assert result.exit_code == 0
    assert result.output == find_recipe(name).read_text()
