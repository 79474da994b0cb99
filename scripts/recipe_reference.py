"""Regenerate docs/recipe-reference.md from the recipe schema."""

from pathlib import Path

from elasticml.recipe.reference import markdown

if __name__ == "__main__":
    target = Path(__file__).resolve().parents[1] / "docs" / "recipe-reference.md"
    target.write_text(markdown())
    print(f"wrote {target}")
