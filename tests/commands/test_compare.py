"""`sensiprune compare`: criteria side by side on the recipe's model."""

from __future__ import annotations

import json

from sensiprune.commands.cli import main
from sensiprune.zoo import LeNet5
from tests.recipe_support import write_recipe


def test_compare_puts_each_criterion_beside_the_baselines(tmp_path):
    path = write_recipe(
        tmp_path,
        model={"factory": "sensiprune.zoo:LeNet300100", "pretrain_epochs": 5},
        compare={"criteria": ["magnitude", "random", "obs"], "sparsities": [0.8, 0.9]},
        finetune={"epochs": 1},
    )
    assert main(["compare", "-q", str(path)]) == 0
    run = tmp_path / "run"
    points = json.loads((run / "comparison.json").read_text())["points"]
    assert len(points) == 6
    one_shot = {(p["criterion"], p["sparsity"]): p["one_shot"] for p in points}
    assert one_shot["magnitude", 0.9] > one_shot["random", 0.9] + 0.2
    assert one_shot["obs", 0.9] >= one_shot["magnitude", 0.9]
    report = (run / "comparison.md").read_text()
    assert "| obs |" in report and "![" in report
    assert (run / "comparison.png").read_bytes()[:4] == b"\x89PNG"


def test_a_structured_comparison_shrinks_every_copy(tmp_path):
    path = write_recipe(
        tmp_path,
        model={"factory": "sensiprune.zoo:LeNet5", "pretrain_epochs": 1},
        prune={"criterion": "taylor", "structured": True, "target": {"sparsity": 0.5}},
        compare={"criteria": ["magnitude", "taylor_fm"], "sparsities": [0.5]},
        finetune={"epochs": 0},
    )
    assert main(["compare", "-q", str(path)]) == 0
    points = json.loads((tmp_path / "run" / "comparison.json").read_text())["points"]
    assert [p["criterion"] for p in points] == ["magnitude", "taylor_fm"]
    assert all(p["finetuned"] is None and 0 < p["one_shot"] <= 1 for p in points)
    dense = sum(p.numel() for p in LeNet5().parameters())
    assert all(p["params"] < 0.6 * dense for p in points)  # channels really removed
