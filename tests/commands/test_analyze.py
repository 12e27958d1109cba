"""`sensiprune analyze`: curves, a cross-validated budget, and a prune that reuses them."""

from __future__ import annotations

import json

from sensiprune.commands.analyze import _folds
from sensiprune.commands.cli import main
from sensiprune.runs.recipe import load_recipe
from sensiprune.runs.runner import run_recipe
from tests.recipe_support import ROOT, write_recipe

ANALYSIS = {"sparsities": [0.5, 0.8, 0.9, 0.95], "folds": 3}


def test_analyze_writes_a_budget_that_prune_then_uses(tmp_path, capsys):
    path = write_recipe(
        tmp_path,
        prune={"criterion": "taylor", "target": {"max_drop": 0.02}, "score_batches": 4},
        analysis=ANALYSIS,
        data={"factory": "tests.recipe_support:digits", "kwargs": {"batch_size": 32}},
    )
    assert main(["analyze", "-q", str(path)]) == 0
    run = tmp_path / "run"
    budget = json.loads((run / "budget.json").read_text())
    assert set(budget) <= {"fc1.weight", "fc2.weight", "fc3.weight"} and budget
    analysis = (run / "analysis.md").read_text()
    assert "3-fold cross-validation" in analysis and "| fc2.weight |" in analysis
    assert (run / "analysis.html").read_text().count("data:image/png;base64,") == 1
    curves = (run / "sensitivity.json").stat().st_mtime_ns

    result = run_recipe(path, show_progress=False)  # the same recipe: continues, reuses curves
    assert result.resumed_after == "pretraining epoch 2"
    assert (run / "sensitivity.json").stat().st_mtime_ns == curves
    assert json.loads((run / "results.json").read_text())["budget"] == budget

    by_file = write_recipe(
        tmp_path,
        "by-file.yaml",
        output=str(tmp_path / "by-file"),
        prune={"criterion": "taylor", "target": {"budget": str(run / "budget.json")}},
        schedule={"kind": "one_shot"},
    )
    run_recipe(by_file, show_progress=False)
    results = json.loads((tmp_path / "by-file" / "results.json").read_text())
    kept = {row["name"]: row["kept"] / row["dense"] for row in results["layers"]}
    for name, sparsity in budget.items():
        assert abs(kept[name] - (1 - sparsity)) < 1e-3


def test_folds_of_a_single_batch_are_refused_before_any_work(tmp_path, capsys):
    big = {"factory": "tests.recipe_support:digits", "kwargs": {"batch_size": 1000}}
    path = write_recipe(tmp_path, analysis={"folds": 5}, data=big)
    assert main(["analyze", "-q", str(path)]) == 2
    err = capsys.readouterr().err
    assert "analysis.folds: 5 folds need at least 2 validation batches each" in err
    assert not (tmp_path / "run").exists()


def test_folds_shrink_to_two_batches_each_and_a_target_at_the_last_point_is_measured_past(
    tmp_path, caplog
):
    recipe = load_recipe(write_recipe(tmp_path, analysis={"folds": 50}))
    with caplog.at_level("WARNING"):
        assert _folds(recipe, 7) == 3
    assert caplog.text.count("cross-validating with 3 folds, not 50") == 1
    shipped = load_recipe(ROOT / "examples" / "recipes" / "lenet300100.yaml")
    assert shipped.prune.target.sparsity == max(shipped.analysis.sparsities) == 0.95
    assert shipped.measured_sparsities()[-4:] == [0.95, 0.9633, 0.9767, 0.99]


def test_a_structured_flops_budget_is_cross_validated_too(tmp_path):
    path = write_recipe(
        tmp_path,
        model={"factory": "sensiprune.zoo:LeNet5", "pretrain_epochs": 2},
        prune={"criterion": "taylor", "structured": True, "target": {"flops": 0.5}},
        analysis={"sparsities": [0.25, 0.5, 0.75], "folds": 2},
    )
    assert main(["analyze", "-q", str(path)]) == 0
    analysis = (tmp_path / "run" / "analysis.md").read_text()
    assert "2-fold cross-validation" in analysis and "channels" in analysis
    budget = json.loads((tmp_path / "run" / "budget.json").read_text())
    assert set(budget) <= {"conv1", "conv2", "fc1", "fc2"} and budget
