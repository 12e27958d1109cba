"""Per-layer sensitivity curves and budget allocation."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import sensiprune as sp
from sensiprune.analysis.sensitivity import SensitivityTable
from sensiprune.runs.train import correct_predictions
from sensiprune.selection.allocation import warn_if_clamped


def test_sensitivity_restores_every_weight_exactly(mlp, mlp_batches):
    before = copy.deepcopy(mlp.state_dict())
    calls = []

    def evaluate(model):
        calls.append(1)
        return sp.evaluate(model, mlp_batches)

    table = sp.sensitivity(mlp, evaluate, [0.5, 0.9], "taylor", mlp_batches, show_progress=False)
    assert all(torch.equal(before[k], v) for k, v in mlp.state_dict().items())
    assert len(calls) == 1 + 3 * 2
    assert table.layers == ("fc1.weight", "fc2.weight", "head.weight")
    assert "fc2.weight" in table.to_markdown()


def test_sensitivity_prunes_one_layer_at_a_time(mlp):
    seen = []

    def evaluate(model):
        seen.append(tuple(int((p == 0).sum()) for p in (model.fc1.weight, model.fc2.weight)))
        return 1.0

    sp.sensitivity(mlp, evaluate, [0.5], show_progress=False)
    assert seen[1:3] == [(64, 0), (0, 96)]


def test_a_failing_evaluate_still_restores_the_layer(mlp):
    before = mlp.fc1.weight.detach().clone()
    calls = {"n": 0}

    def evaluate(model):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("boom")
        return 0.5

    with pytest.raises(RuntimeError, match="boom"):
        sp.sensitivity(mlp, evaluate, [0.5], show_progress=False)
    assert torch.equal(mlp.fc1.weight, before)


def _table(drops: dict[str, list[float]], sizes: dict[str, int]) -> SensitivityTable:
    sparsities = (0.25, 0.5, 0.75, 0.9)
    return SensitivityTable(
        "magnitude", 1.0, tuple(drops), tuple(sizes[n] for n in drops), sparsities,
        tuple(tuple(1.0 - d for d in drops[n]) for n in drops),
    )  # fmt: skip


def test_allocation_prunes_the_insensitive_layer_much_more_and_meets_the_target():
    table = _table(
        {"sensitive": [0.05, 0.2, 0.5, 0.9], "robust": [0.0, 0.001, 0.002, 0.01]},
        {"sensitive": 1000, "robust": 1000},
    )
    budget = sp.allocate(table, 0.5)
    assert budget["robust"] >= 0.85 and budget.get("sensitive", 0) <= 0.15
    pruned = sum(round(budget.get(n, 0) * size) for n, size in zip(table.layers, table.sizes))
    assert abs(pruned - 1000) <= len(table.layers)
    assert budget.predicted_drop == pytest.approx(
        table.drop(0, budget.get("sensitive", 0)) + table.drop(1, budget["robust"])
    )


def test_allocation_respects_bounds_and_refuses_the_impossible():
    table = _table({"a": [0.0] * 4, "b": [0.0] * 4}, {"a": 100, "b": 300})
    budget = sp.allocate(table, 0.6, max_sparsity=0.7)
    assert max(budget.values()) <= 0.7 + 1e-9
    with pytest.raises(sp.SensipruneError, match="cannot be met"):
        sp.allocate(table, 0.8, max_sparsity=0.7)


def test_a_uniform_budget_is_one_sparsity_everywhere_with_its_predicted_drop():
    table = _table({"a": [0.0, 0.1, 0.3, 0.6], "b": [0.0, 0.0, 0.1, 0.2]}, {"a": 100, "b": 300})
    budget = sp.allocate(table, uniform=0.5)
    assert budget == {"a": 0.5, "b": 0.5}
    assert budget.predicted_drop == pytest.approx(0.1)
    assert sp.allocate(table, uniform=0.95) == {"a": 0.9, "b": 0.9}  # as far as measured
    with pytest.raises(sp.SensipruneError, match="exactly one of"):
        sp.allocate(table, 0.5, uniform=0.5)


def test_the_budget_drives_prune(mlp, mlp_batches):
    table = sp.sensitivity(
        mlp, lambda m: sp.evaluate(m, mlp_batches), [0.3, 0.6, 0.9], show_progress=False
    )
    budget = sp.allocate(table, 0.6)
    result = sp.prune(mlp, budget, criterion="magnitude")
    assert result.sparsity == pytest.approx(0.6, abs=0.01)


@pytest.mark.parametrize(
    ("sparsities", "evaluate", "message"),
    [
        ([], lambda m: 1.0, "sparsities is empty"),
        ([0.5, 1.0], lambda m: 1.0, r"\[0, 1\)"),
        ([0.5], lambda m: float("nan"), "must return a number"),
        ([0.5], lambda m: "good", "must return a number"),
    ],
)
def test_bad_sensitivity_input(mlp, sparsities, evaluate, message):
    with pytest.raises(sp.SensipruneError, match=message):
        sp.sensitivity(mlp, evaluate, sparsities, show_progress=False)


def test_allocation_on_a_real_model_beats_uniform(digits):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    sp.finetune(model, digits.train, epochs=10, show_progress=False)
    table = sp.sensitivity(
        model, lambda m: sp.evaluate(m, digits.val), [0.5, 0.8, 0.9, 0.95, 0.98],
        show_progress=False,
    )  # fmt: skip
    allocated, uniform = copy.deepcopy(model), copy.deepcopy(model)
    sp.prune(allocated, sp.allocate(table, 0.9), criterion="magnitude")
    sp.prune(uniform, 0.9, criterion="magnitude", scope="layer")
    assert sp.evaluate(allocated, digits.val) >= sp.evaluate(uniform, digits.val)


def test_cross_validation_uses_disjoint_folds_and_only_the_validation_data(digits):
    from sensiprune.analysis.validation import fold_indices

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    sp.finetune(model, digits.train, epochs=5, show_progress=False)
    val = [(x, y) for x, y in digits.val for _ in range(1)]
    seen: set[int] = set()

    def metric(model, batch):
        seen.add(id(batch[0]))
        return correct_predictions(model, batch)

    result = sp.cross_validate(model, val, target_sparsity=0.8, folds=3, metric=metric,
                               sparsities=(0.5, 0.8, 0.9))  # fmt: skip
    folds = [set(f) for f in result.folds]
    assert set().union(*folds) == set(range(len(val)))
    assert all(not (a & b) for i, a in enumerate(folds) for b in folds[i + 1 :])
    assert seen == {id(x) for x, _ in val}  # never a batch from anywhere else (the test split)
    assert len(result.observed) == 3 and "3-fold cross-validation" in str(result)
    assert sum(result.budget.values()) > 0
    assert fold_indices(7, 3) == ((0, 3, 6), (1, 4), (2, 5))


def test_fold_drops_are_pooled_by_the_samples_each_fold_held_out():
    from sensiprune.analysis.validation import CrossValidation
    from sensiprune.selection.allocation import Budget

    # a short last batch is a fold of its own: its drop weighs as its 8 samples, not as 64
    checked = CrossValidation(Budget(), ((0,), (1,)), (0.0, 0.0), (0.01, 0.5), samples=(64, 8))
    assert checked.observed_mean == pytest.approx((64 * 0.01 + 8 * 0.5) / 72)
    spread = 64 * (0.01 - checked.observed_mean) ** 2 + 8 * (0.5 - checked.observed_mean) ** 2
    assert checked.observed_std == pytest.approx((spread / 72 * 2) ** 0.5)
    assert checked.observed_error == pytest.approx(checked.observed_std / 2**0.5)
    alike = CrossValidation(Budget(), ((0,), (1,)), (0.0, 0.0), (0.01, 0.5))
    assert alike.observed_mean == pytest.approx(0.255)


def test_the_paired_error_sees_samples_change_sides_where_every_fold_nets_to_no_drop():
    from sensiprune.analysis.validation import CrossValidation, paired_error
    from sensiprune.selection.allocation import Budget

    # per sample: one lost, one won, two alike: the textbook standard error of the mean
    drops, ones = torch.tensor([1.0, -1.0, 0.0, 0.0]), torch.ones(4)
    assert paired_error(drops, ones) == pytest.approx(drops.std().item() / 2)
    # per batch of unequal sizes: the ratio estimator's, zero where every batch drops alike
    assert paired_error(torch.tensor([0.5, 1.0]), torch.tensor([10.0, 20.0])) == 0.0
    assert paired_error(torch.tensor([2.0]), torch.tensor([10.0])) == 0.0  # one unit: unknown
    folds_alike = CrossValidation(Budget(), ((0,), (1,)), (0.0, 0.0), (0.0, 0.0), paired_error=0.01)
    assert folds_alike.observed_std == 0.0 and folds_alike.observed_error == 0.01


def test_cross_validation_pairs_every_held_out_sample(mlp, mlp_batches):
    from sensiprune.runs.train import correct_predictions, metric_units

    per_sample, ones = metric_units(mlp, mlp_batches)
    assert len(per_sample) == sum(len(y) for _, y in mlp_batches) and bool((ones == 1).all())
    assert per_sample.sum().item() == sum(correct_predictions(mlp, b)[0] for b in mlp_batches)
    per_batch, sizes = metric_units(mlp, mlp_batches, correct_predictions)
    assert sizes.tolist() == [len(y) for _, y in mlp_batches]
    assert torch.allclose(per_batch.sum(), per_sample.sum())
    result = sp.cross_validate(mlp, mlp_batches, target_sparsity=0.8, folds=2,
                               sparsities=(0.5, 0.9))  # fmt: skip
    assert result.paired_error > 0  # at 80%, some samples change sides
    assert result.observed_error >= result.paired_error


def test_cross_validation_counts_the_samples_of_each_fold(mlp, mlp_batches):
    result = sp.cross_validate(mlp, mlp_batches, target_sparsity=0.5, folds=2,
                               sparsities=(0.5, 0.9))  # fmt: skip
    sizes = [sum(len(mlp_batches[i][1]) for i in fold) for fold in result.folds]
    assert list(result.samples) == sizes


def test_cross_validation_bad_input(mlp, mlp_batches):
    with pytest.raises(sp.SensipruneError, match="folds must be"):
        sp.cross_validate(mlp, mlp_batches, target_sparsity=0.5, folds=1)
    with pytest.raises(sp.SensipruneError, match="need at least 5"):
        sp.cross_validate(mlp, mlp_batches, target_sparsity=0.5, folds=5)
    with pytest.raises(sp.SensipruneError, match="exactly one"):
        sp.cross_validate(mlp, mlp_batches, folds=2)


def test_max_drop_allocates_as_much_as_the_curves_allow():
    table = _table({"a": [0.0, 0.01, 0.02, 0.5], "b": [0.0, 0.0, 0.3, 0.6]}, {"a": 100, "b": 100})
    budget = sp.allocate(table, max_drop=0.02)
    assert budget.predicted_drop <= 0.02 + 1e-12
    assert budget["a"] >= 0.7 and budget["b"] >= 0.5


def test_an_interrupted_analysis_resumes_from_its_partial_table(mlp, mlp_batches, tmp_path):
    partial = tmp_path / "sensitivity.json"
    calls = {"n": 0}

    def flaky(model):
        calls["n"] += 1
        if calls["n"] == 6:  # in the middle of the second layer
            raise KeyboardInterrupt
        return sp.evaluate(model, mlp_batches)

    with pytest.raises(KeyboardInterrupt):
        sp.sensitivity(mlp, flaky, [0.3, 0.6, 0.9], show_progress=False, resume=partial)
    assert partial.is_file()
    counted = []

    def evaluate(model):
        counted.append(1)
        return sp.evaluate(model, mlp_batches)

    resumed = sp.sensitivity(mlp, evaluate, [0.3, 0.6, 0.9], show_progress=False, resume=partial)
    assert len(counted) == 2 * 3  # only the two unfinished layers, no new baseline
    fresh = sp.sensitivity(mlp, evaluate, [0.3, 0.6, 0.9], show_progress=False)
    assert resumed == fresh
    with pytest.raises(sp.SensipruneError, match="another model, criterion or sparsity"):
        sp.sensitivity(mlp, evaluate, [0.5], show_progress=False, resume=partial)


def test_structured_sensitivity_measures_channel_families_and_drives_a_structured_prune():
    from tests.architectures import ResNet

    torch.manual_seed(0)
    model = ResNet().eval()
    x = torch.randn(4, 3, 8, 8)
    labels = torch.randint(0, 5, (4,))
    before = copy.deepcopy(model.state_dict())

    def evaluate(m):
        with torch.no_grad():
            return -torch.nn.functional.cross_entropy(m(x), labels).item()

    table = sp.sensitivity(model, evaluate, [0.25, 0.5, 0.75], structured=True, example_inputs=x,
                           show_progress=False)  # fmt: skip
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # the residual stream (stem.0, layer1.0.conv2, layer1.1.conv2) is one family of 16
    # channels, named by the first of its producers in sorted order
    assert table.sizes[table.layers.index("layer1.0.conv2")] == 16
    assert "stem.0" not in table.layers and "layer1.0.conv1" in table.layers
    budget = sp.allocate(table, target_sparsity=0.5, min_density=0.1)
    result = sp.prune(model, budget, criterion="magnitude", structured=True, example_inputs=x)
    assert result.flops_after < result.flops_before


def test_a_flops_target_for_structured_tables():
    from tests.architectures import VGG

    torch.manual_seed(0)
    model = VGG().eval()
    x = torch.randn(2, 3, 16, 16)

    def evaluate(m):
        with torch.no_grad():
            return -m(x).pow(2).mean().item()

    table = sp.sensitivity(model, evaluate, [0.25, 0.5, 0.75, 0.9], structured=True,
                           example_inputs=x, show_progress=False)  # fmt: skip
    assert table.flop_model is not None
    assert table.flop_model.kept([0.0] * len(table.layers)) == table.flop_model.total
    budget = sp.allocate(table, target_flops=0.5)
    result = sp.prune(model, budget, criterion="magnitude", structured=True, example_inputs=x)
    # the FLOP model multiplies the shrinking of a layer's inputs and outputs, as surgery does;
    # what is left is the rounding of channel counts
    kept = result.flops_after / result.flops_before
    assert 0.46 <= kept <= 0.54
    with pytest.raises(sp.SensipruneError, match="structured=True"):
        sp.allocate(_table({"a": [0.0] * 4}, {"a": 10}), target_flops=0.5)
    with pytest.raises(sp.SensipruneError, match="exactly one"):
        sp.allocate(table, target_flops=0.5, target_sparsity=0.5)


def test_obs_curves_compensate_and_restore_exactly(digits):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10))
    sp.finetune(model, digits.train, epochs=10, show_progress=False)
    before = copy.deepcopy(model.state_dict())

    def evaluate(m):
        return sp.evaluate(m, digits.val)

    obs = sp.sensitivity(model, evaluate, [0.8, 0.95], "obs", digits.val, show_progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # bias too
    magnitude = sp.sensitivity(model, evaluate, [0.8, 0.95], show_progress=False)
    first = obs.layers.index("1.weight")
    assert obs.values[first][1] > magnitude.values[first][1]  # 95% of the first layer


def test_allocation_says_when_the_curves_leave_it_no_room(caplog):
    table = _table({"a": [0.0, 0.1, 0.2, 0.3], "b": [0.0, 0.1, 0.2, 0.3]}, {"a": 100, "b": 100})
    assert sp.allocate(table, 0.5).clamped is None
    budget = sp.allocate(table, 0.9)
    assert budget.clamped == max(table.sparsities)
    with caplog.at_level("WARNING", logger="sensiprune.analysis.sensitivity"):
        warn_if_clamped(budget)
    assert caplog.text.count("measure sparser points") == 1
