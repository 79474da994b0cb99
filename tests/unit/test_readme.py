"""The README's commands are the ones CI runs."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_ci_runs_the_readme_test_command():
    ci_command = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci_command in (ROOT / "README.md").read_text()


def test_readme_installs_the_tested_torch():
    readme = (ROOT / "README.md").read_text()
    assert readme.count("torch==2.13.0") >= 2
    assert "elasticml train recipes/digits.yaml" in readme
