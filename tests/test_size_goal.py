"""A file-size goal: the sparsity that keeps a share of the saved bytes, and the correction of
a cross-validated budget that saves too little."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

import sensiprune as sp
from sensiprune.io.saving import saved_bytes
from sensiprune.size_goal import file_sparsity, within_file_size


def test_the_uniform_sparsity_meets_the_share_of_bytes_to_the_byte(mlp):
    sparsity = file_sparsity(mlp, 0.4)
    names = ["fc1.weight", "fc2.weight", "head.weight"]
    goal = 0.4 * saved_bytes(mlp)
    assert saved_bytes(mlp, dict.fromkeys(names, sparsity)) <= goal
    assert saved_bytes(mlp, dict.fromkeys(names, sparsity - 0.01)) > goal


def test_ignored_layers_and_biases_bound_what_a_file_can_lose(mlp):
    with pytest.raises(sp.SensipruneError, match=r"bytes are not prunable"):
        file_sparsity(mlp, 0.3, ignore=["fc2"])


def test_a_budget_that_saves_too_little_is_validated_again_deeper(mlp, mlp_batches):
    """The folds' curves are reused; the sparsity rises until the file meets the goal."""
    table = sp.sensitivity(mlp, lambda m: sp.evaluate(m, mlp_batches), (0.5, 0.9), "magnitude")
    calls = []

    def validate(target_sparsity, table, fold_tables):
        calls.append((target_sparsity, fold_tables))
        budget = dict.fromkeys(table.layers, target_sparsity)
        return SimpleNamespace(table=table, budget=budget, fold_tables=fold_tables)

    goal = 0.3 * saved_bytes(mlp)
    start = validate(0.5, table, ("curves",))
    checked = within_file_size(start, mlp, goal, validate)
    assert saved_bytes(mlp, checked.budget) <= goal
    assert len(calls) >= 2 and calls[-1][0] > 0.5
    assert all(folds == ("curves",) for _, folds in calls)
    assert within_file_size(checked, mlp, goal, validate) is checked  # met: left alone


def test_a_budget_that_saves_more_than_asked_gives_weights_back(mlp, mlp_batches):
    """Under the goal by more than the slack, the budget is validated again at a lower
    sparsity, and the largest file still under the goal is kept."""
    table = sp.sensitivity(mlp, lambda m: sp.evaluate(m, mlp_batches), (0.5, 0.9), "magnitude")

    def validate(target_sparsity, table, fold_tables):
        budget = dict.fromkeys(table.layers, target_sparsity)
        return SimpleNamespace(table=table, budget=budget, fold_tables=fold_tables)

    goal = 0.3 * saved_bytes(mlp)
    start = validate(0.95, table, ())
    checked = within_file_size(start, mlp, goal, validate)
    kept = saved_bytes(mlp, checked.budget)
    assert saved_bytes(mlp, start.budget) < kept <= goal
    assert kept >= 0.97 * goal
