"""Recipes: every mistake is named by file, line and field, before any work starts."""

from __future__ import annotations

import pytest

from sensiprune.errors import SensipruneError
from sensiprune.runs.recipe import field_reference, load_recipe
from tests.recipe_support import write_recipe

GOOD = """\
output: runs/x
model:
  factory: sensiprune.zoo:LeNet300100
data:
  factory: tests.recipe_support:digits
prune:
  target:
    sparsity: 0.5
"""


def _error(tmp_path, text: str) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    with pytest.raises(SensipruneError) as caught:
        load_recipe(path)
    return str(caught.value)


def test_defaults_fill_what_a_recipe_leaves_out(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(GOOD)
    recipe = load_recipe(path)
    assert recipe.prune.criterion == "taylor" and recipe.schedule.kind == "one_shot"
    assert recipe.finetune.optimizer.name == "adam" and recipe.prune.target.sparsity == 0.5


@pytest.mark.parametrize("curve", ["cubic", "linear", "geometric"])
def test_every_schedule_curve_is_a_recipe_choice(tmp_path, curve):
    path = tmp_path / "recipe.yaml"
    path.write_text(GOOD + f"schedule:\n  kind: iterative\n  steps: 2\n  curve: {curve}\n")
    assert load_recipe(path).schedule.curve == curve


def test_a_negative_step_count_is_named_with_its_line(tmp_path):
    message = _error(tmp_path, GOOD + "schedule:\n  kind: iterative\n  steps: -3\n")
    assert (
        message == f"{tmp_path / 'recipe.yaml'}:11: schedule.steps: must be greater than 0, got -3"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            GOOD.replace("sparsity: 0.5", "sparsity: lots"),
            ":8: prune.target.sparsity: must be a valid number",
        ),
        (
            GOOD.replace("  target:", "  criterion: psychic\n  target:"),
            ":7: prune.criterion: unknown criterion 'psychic'",
        ),
        (GOOD + "finetun:\n  epochs: 2\n", ":9: finetun: unknown field"),
        (
            GOOD.replace("sensiprune.zoo:LeNet300100", "no colon"),
            ":3: model.factory: must match pattern",
        ),
        (
            GOOD.replace("    sparsity: 0.5", "    sparsity: 0.5\n    flops: 0.5"),
            ":7: prune.target: give exactly one of",
        ),
        (GOOD.replace("output: runs/x\n", ""), ":1: output: is required"),
        (
            GOOD.replace("prune:\n", "prune:\n  round_to: fast\n"),
            ":7: prune.round_to: must be a positive integer or 'auto', got 'fast'",
        ),
        (
            GOOD + "schedule:\n  kind: gradual\n  steps: 4\nfinetune:\n  epochs: 0\n",
            "gradual pruning needs finetune.epochs",
        ),
        (
            GOOD.replace("prune:\n", "prune:\n  pattern: 2-4\n"),
            ':7: prune.pattern: pattern must be "N:M" with 0 < N < M',
        ),
        (
            GOOD.replace("prune:\n", "prune:\n  pattern: '2:4'\n").replace("0.5", "0.7"),
            "prune.pattern '2:4' prunes 2 of every 4 weights: give prune.target.sparsity: 0.5",
        ),
        (
            GOOD.replace("prune:\n", "prune:\n  pattern: '2:4'\n")
            + "schedule:\n  kind: iterative\n  steps: 2\n",
            "prune.pattern is filled in one step of masks: use schedule.kind one_shot",
        ),
    ],
)
def test_each_mistake_gets_one_line_naming_the_field(tmp_path, text, expected):
    message = _error(tmp_path, text)
    assert expected in message and "\n" not in message


def test_a_pattern_and_block_by_block_reach_the_prune_options(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(GOOD.replace("prune:\n", "prune:\n  pattern: '2:4'\n  criterion: obs\n"
                                 "  blockwise: false\n"))  # fmt: skip
    options = load_recipe(path).prune.options(None, 0, False)
    assert options.pattern == "2:4" and options.nm() == (2, 4) and options.blockwise is False
    options.check()
    path.write_text(GOOD)
    assert load_recipe(path).prune.options(None, 0, False).blockwise is None


def test_invalid_yaml_names_the_line(tmp_path):
    message = _error(tmp_path, GOOD + "schedule: [unclosed\n")
    assert ":10: invalid YAML" in message or ":11: invalid YAML" in message


def test_a_recipe_that_is_not_a_mapping_or_missing(tmp_path):
    assert "a recipe is a YAML mapping" in _error(tmp_path, "- just\n- a list\n")
    with pytest.raises(SensipruneError, match="no such recipe file"):
        load_recipe(tmp_path / "absent.yaml")


def test_the_fingerprints_ignore_report_and_compare_and_group_the_rest(tmp_path):
    def prints(name: str, **sections) -> dict[str, str]:
        return load_recipe(write_recipe(tmp_path, name, **sections)).fingerprints()

    base = prints("a.yaml")
    assert prints("b.yaml", report={"latency": True}, compare={"criteria": ["snip"]}) == base
    changes = [
        ({"seed": 1}, "run"),
        ({"schedule": {"kind": "iterative", "steps": 3}}, "prune"),
        ({"finetune": {"epochs": 3}}, "finetune"),
    ]
    for sections, group in changes:
        changed = prints("c.yaml", **sections)
        assert {g for g in base if base[g] != changed[g]} == {group}


def test_the_field_reference_documents_every_section():
    text = field_reference()
    for field in (
        "output",
        "model:",
        "  weights",
        "prune:",
        "    sparsity",
        "schedule:",
        "lr_schedule",
    ):
        assert field in text
