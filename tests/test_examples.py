"""The examples run as written (they are documentation that must not rot)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from sensiprune.runs.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]


def test_prune_your_model_runs_end_to_end():
    run = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "prune_your_model.py")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "masked, one-shot: test accuracy" in run.stdout
    assert "reloaded: test accuracy" in run.stdout


def test_every_example_recipe_is_valid():
    recipes = sorted((ROOT / "examples" / "recipes").glob("*.yaml"))
    assert len(recipes) >= 3
    for path in recipes:
        load_recipe(path)


def test_the_recipe_for_a_model_outside_the_package_runs(tmp_path):
    """Run from another directory: the recipe's own directory supplies `my_model`."""
    recipe = ROOT / "examples" / "recipes" / "my_model.yaml"
    run = subprocess.run(
        [sys.executable, "-m", "sensiprune", "prune", "-q", str(recipe)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    results = json.loads((tmp_path / "runs" / "my-model" / "results.json").read_text())
    assert results["pruned"]["flops"] < 0.5 * results["dense"]["flops"]
    assert results["pruned"]["test"] > 0.85
