"""`sensiprune compress`: a recipe's model compressed to its goal, saved and reported."""

from __future__ import annotations

import json

import pytest

import sensiprune as sp
from sensiprune.commands.cli import main
from sensiprune.io.saving import saved_bytes
from sensiprune.zoo import LeNet300100
from tests.recipe_support import write_recipe

DATA = {"factory": "tests.recipe_support:digits", "kwargs": {"batch_size": 64}}


def test_compress_reaches_the_goal_and_saves_the_model(tmp_path, capsys):
    goal = {"target": {"params": 0.2}, "criterion": "magnitude", "folds": 2,
            "epochs_per_step": 1}  # fmt: skip
    path = write_recipe(tmp_path, compress=goal, data=DATA)
    assert main(["compress", "-q", str(path)]) == 0
    run = tmp_path / "run"
    result = json.loads((run / "compress.json").read_text())
    assert result["goal"] == {"params": 0.2}
    assert result["params_kept"] == pytest.approx(0.2, abs=0.01)
    assert set(result["budget"]) <= {"fc1.weight", "fc2.weight", "fc3.weight"}
    report = (run / "compress.md").read_text()
    assert "compress to params=0.2" in report and "| fc1.weight |" in report
    html = (run / "compress.html").read_text()
    assert html.count("data:image/png;base64,") == 2  # the curves with thresholds, the path
    assert "## Before and after" in report and "x faster)" in report
    assert "Latency table" not in report  # a size goal is not allocated against time
    model = sp.load(run / "model", LeNet300100)
    kept = sum(int((p != 0).sum()) for p in model.parameters())
    assert kept / sum(p.numel() for p in model.parameters()) == pytest.approx(0.2, abs=0.01)
    # the file the run saved, in the bytes the report gives
    assert result["bytes_kept"] == pytest.approx(saved_bytes(model) / saved_bytes(LeNet300100()))
    assert "file bytes" in report and f"{result['bytes_kept']:.1%}" in report
    assert "model:" in capsys.readouterr().out


def test_a_speed_goal_reports_its_latency_table(tmp_path):
    goal = {"target": {"speedup": 1.5}, "criterion": "magnitude", "folds": 2,
            "epochs_per_step": 0, "round_to": 1}  # fmt: skip
    path = write_recipe(tmp_path, compress=goal, data=DATA)
    assert main(["compress", "-q", str(path)]) == 0
    result = json.loads((tmp_path / "run" / "compress.json").read_text())
    assert result["goal"] == {"speedup": 1.5}
    assert set(result["budget"]) <= set(result["latency_table"]["saved"]) == {"fc1", "fc2"}
    report = (tmp_path / "run" / "compress.md").read_text()
    assert "## Latency table" in report and "| fc1 |" in report
    # the report says what the budget was allocated to, as the result does
    assert result["allocated_to"] in ("measured latency", "FLOPs", "uniform cuts")
    chosen = result["speed_candidates"][0]
    assert chosen["allocated_to"] == result["allocated_to"]
    assert chosen["target"] and set(chosen["budget"]) <= {"fc1", "fc2"}
    assert f"| {chosen['allocated_to']} | any | {chosen['speedup']:.2f}x |" in report


@pytest.mark.parametrize(
    ("compress", "message"),
    [
        (None, "needs a goal"),
        ({"target": {"speedup": 0.5}}, "compress.target"),
        ({"target": {"bytes": 1.5}}, "compress.target"),
        ({"target": {"size": 0.1}}, "compress.target"),
        ({"target": {"params": 0.1, "flops": 0.5}}, "compress.target"),
        ({"target": {"params": 0.1, "max_drop": 2.0}}, "compress.target"),
    ],
)
def test_a_recipe_without_a_valid_goal_is_one_line(tmp_path, capsys, compress, message):
    path = write_recipe(tmp_path, compress=compress, data=DATA)
    assert main(["compress", "-q", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.strip().count("\n") == 0 and "Traceback" not in err
    assert not (tmp_path / "run" / "compress.json").exists()


@pytest.mark.parametrize(("bound", "short"), [(0.99, False), (0.0, True)])
def test_a_recipe_goal_may_carry_a_drop_bound(tmp_path, bound, short):
    goal = {"target": {"params": 0.05, "max_drop": bound}, "criterion": "magnitude",
            "folds": 2, "steps": 2, "epochs_per_step": 0}  # fmt: skip
    path = write_recipe(tmp_path, compress=goal, data=DATA)
    assert main(["compress", "-q", str(path)]) == 0
    result = json.loads((tmp_path / "run" / "compress.json").read_text())
    assert result["goal"] == {"params": 0.05, "max_drop": bound}
    assert result["stopped_short"] is short and (len(result["steps"]) < 2) is short
    report = (tmp_path / "run" / "compress.md").read_text()
    assert ("The run stopped short of this budget" in report) is short
