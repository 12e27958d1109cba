"""sp.compress: a goal in, the per-layer thresholds found, validated, and met."""

from __future__ import annotations

import copy
import logging
import sys
from dataclasses import replace

import pytest
import torch
from safetensors import safe_open
from torch import nn

import sensiprune as sp
from sensiprune import speed_goal
from sensiprune.analysis.latency import LatencyModel
from sensiprune.io.saving import saved_bytes
from sensiprune.measure import count_flops
from sensiprune.selection.groups import vector_width
from sensiprune.speed_goal import SpeedCandidate


def _batches(seed: int, n: int, shape: tuple[int, ...]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n * 16, *shape, generator=generator)
    y = (x.flatten(1)[:, 0] > 0).long() + (x.flatten(1)[:, 1] > 0.5).long()
    return [(x[i : i + 16], y[i : i + 16]) for i in range(0, n * 16, 16)]


def _trained(model: nn.Module, data) -> nn.Module:
    torch.manual_seed(0)
    sp.finetune(model, data, epochs=5, lr=1e-2, show_progress=False)
    return model


@pytest.fixture
def mlp_and_data(mlp):
    train, val, test = _batches(1, 6, (8,)), _batches(2, 4, (8,)), _batches(3, 4, (8,))
    return _trained(mlp, train), train, val, test


def test_a_params_goal_is_met_and_the_prediction_is_reported(mlp_and_data):
    model, train, val, test = mlp_and_data
    total = sum(p.numel() for p in model.parameters())
    result = sp.compress(model, train, val, {"params": 0.3}, test_data=test, folds=2, steps=2)
    nonzero = sum(int((p != 0).sum()) for p in model.parameters())
    assert result.params_kept == pytest.approx(nonzero / total)
    assert result.params_kept == pytest.approx(0.3, abs=0.01)
    assert result.method.startswith("unstructured") and result.criterion == "obs"
    assert [s.step for s in result.steps] == [1, 2]
    assert result.steps[0].params_kept > result.steps[1].params_kept  # the cubic path
    assert set(result.budget) <= {"fc1.weight", "fc2.weight", "head.weight"}
    assert set(result.budget) <= set(result.table.layers)  # allocated from these curves
    assert max(result.table.sparsities) > 1 - 0.3  # measured past what the goal needs
    assert result.cross_validated_std >= 0
    assert result.measured_drop == pytest.approx(result.dense_metric - sp.evaluate(model, test))
    assert "compress to params=0.3" in str(result) and "step 2" in str(result)
    assert result.one_shot_metric is None  # two steps: no one-shot prune to compare with


def test_a_bytes_goal_keeps_that_share_of_the_saved_file(mlp_and_data, tmp_path):
    model, train, val, test = mlp_and_data
    dense_bytes = saved_bytes(model)
    result = sp.compress(model, train, val, {"bytes": 0.3}, test_data=test, folds=2,
                         epochs_per_step=1)  # fmt: skip
    assert result.method.startswith("unstructured") and result.criterion == "obs"
    assert result.bytes_kept == pytest.approx(saved_bytes(model) / dense_bytes)
    assert 0.25 <= result.bytes_kept <= 0.3
    assert result.params_kept < result.bytes_kept  # indices or a bitmask cost bytes too
    assert "file bytes kept" in str(result)
    sp.save(model, tmp_path / "small")
    with safe_open(tmp_path / "small" / "weights.safetensors", "pt") as stored:
        written = sum(stored.get_tensor(k).nbytes for k in stored.keys())  # noqa: SIM118
    assert written == saved_bytes(model)


def _two_convs(width: int) -> nn.Sequential:
    """Two convolutions on the 2x4x4 inputs of ``cnn_batches``, then a classifier."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.Flatten(),
        nn.Linear(width * 16, 3),
    )  # fmt: skip


def test_a_flops_goal_shrinks_layers(cnn_batches):
    model = _two_convs(8)
    x = cnn_batches[0][0]
    dense_flops = count_flops(model, x[:1]).effective
    result = sp.compress(model, cnn_batches, cnn_batches, {"flops": 0.6}, folds=3, steps=2,
                         criterion="magnitude", epochs_per_step=0)  # fmt: skip
    assert result.method.startswith("structured")
    assert model[0].out_channels < 8 or model[3].out_channels < 8
    flops = count_flops(model, x[:1]).effective
    assert result.flops_kept == pytest.approx(flops / dense_flops)
    assert result.flops_kept <= 0.75  # the allocation aims at 0.6 in whole channels


def _share_of_parameters(dense: int):
    """A metric that falls as the model shrinks: the share of ``dense`` parameters it keeps
    (per batch, so the paired error of every batch's equal drop is zero)."""

    def metric(model: nn.Module, batch) -> tuple[float, int]:
        n = len(batch[0])
        return n * sum(p.numel() for p in model.parameters()) / dense, n

    return metric


@pytest.mark.parametrize(
    ("bound", "path", "stop"),
    [
        (0.76, [1, 2, 2.5], "after half of step 3"),  # step 3 keeps 21%, half of it 26%
        (0.7, [1, 2], "after step 2, as half of step 3 went past it too"),
    ],
)
def test_a_step_past_the_drop_bound_is_undone_and_halved_once(cnn_batches, bound, path, stop):
    model = _two_convs(16)
    dense = sum(p.numel() for p in model.parameters())
    result = sp.compress(model, cnn_batches, cnn_batches, {"flops": 0.05, "max_drop": bound},
                         folds=3, criterion="magnitude", epochs_per_step=0,
                         metric=_share_of_parameters(dense))  # fmt: skip
    assert result.goal == {"flops": 0.05, "max_drop": bound}
    assert result.stopped_short and f"stopped short of the goal, {stop}:" in result.method
    assert [s.step for s in result.steps] == path  # 4 geometric steps by default with a bound
    kept = sum(p.numel() for p in model.parameters())
    assert result.steps[-1].metric == pytest.approx(kept / dense) and kept / dense >= 1 - bound
    assert result.flops_kept > 0.05  # short of the goal
    assert model(cnn_batches[0][0]).shape == (8, 3)  # the last point held, whole and running


def test_an_unstructured_step_past_the_bound_leaves_the_masks_of_the_last_one(mlp_and_data):
    """Undone in place: the masks, and the zeros they hold through fine-tuning, are the
    last held step's."""
    model, train, val, _ = mlp_and_data
    dense = sum(p.numel() for p in model.parameters())

    def nonzero_share(net: nn.Module, batch) -> tuple[float, int]:
        n = len(batch[0])
        return n * sum(int((p != 0).sum()) for p in net.parameters()) / dense, n

    result = sp.compress(model, train, val, {"params": 0.15, "max_drop": 0.5}, folds=2,
                         criterion="magnitude", epochs_per_step=1,
                         metric=nonzero_share)  # fmt: skip
    assert result.stopped_short and result.steps
    kept = sum(int((p != 0).sum()) for p in model.parameters())
    assert result.steps[-1].metric == pytest.approx(kept / dense) and kept / dense >= 0.5
    masks = sp.get_masks(model)
    assert masks and all(
        int(mask.sum()) < mask.numel() for mask in masks.values()
    )  # pruned, not dense
    sp.finetune(model, train, epochs=1, show_progress=False)
    assert sum(int((p != 0).sum()) for p in model.parameters()) == kept  # masks still hold


def test_channel_steps_rounded_end_where_one_step_does(cnn_batches):
    widths = []
    for steps in (1, 4):
        model = _two_convs(32)
        sp.compress(model, cnn_batches, cnn_batches, {"flops": 0.1}, folds=3, steps=steps,
                    criterion="magnitude", epochs_per_step=0, round_to=8)  # fmt: skip
        widths.append((model[0].out_channels, model[3].out_channels))
    assert widths[0] == widths[1] and all(w % 8 == 0 for w in widths[1])


def test_a_step_past_the_drop_bound_at_once_leaves_the_dense_model(mlp_and_data):
    model, train, val, _ = mlp_and_data
    before = copy.deepcopy(model.state_dict())
    dense = sum(p.numel() for p in model.parameters())
    result = sp.compress(model, train, val, {"flops": 0.3, "max_drop": 0.0}, folds=2, steps=1,
                         epochs_per_step=0, metric=_share_of_parameters(dense))  # fmt: skip
    assert result.stopped_short and result.steps == ()
    assert "dense: not even half of step 1 held" in result.method
    assert result.params_kept == 1.0 and result.flops_kept == 1.0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_a_bound_never_crossed_runs_every_step(mlp_and_data):
    model, train, val, _ = mlp_and_data
    result = sp.compress(model, train, val, {"params": 0.3, "max_drop": 0.99}, folds=2,
                         epochs_per_step=0)  # fmt: skip
    assert not result.stopped_short and [s.step for s in result.steps] == [1, 2, 3, 4]
    assert result.params_kept <= 0.3 + 1e-6
    # each step's metric is the one its check measured, the model's own on the validation data
    assert result.steps[-1].metric == pytest.approx(sp.evaluate(model, val), abs=1e-12)


def test_a_params_goal_spends_no_weight_on_units_no_layer_reads(mlp_and_data):
    """The sparsity is lowered until the model, with the units its deep budget leaves unread
    masked, meets the goal: no unit keeps weights that nothing reads."""
    model, train, val, test = mlp_and_data
    total = sum(p.numel() for p in model.parameters())
    result = sp.compress(model, train, val, {"params": 0.1}, test_data=test, folds=2,
                         epochs_per_step=0)  # fmt: skip
    assert result.params_kept <= 0.1 and result.params_kept == pytest.approx(
        sum(int((p != 0).sum()) for p in model.parameters()) / total
    )
    assert "parameters of units no layer reads masked too" in result.method
    for layer, reader in ((model.fc1, model.fc2), (model.fc2, model.head)):
        unread = ~reader.weight.ne(0).any(0)
        assert unread.any() and not layer.weight[unread].any() and not layer.bias[unread].any()


def test_a_speed_goal_is_allocated_against_measured_latency(tmp_path):
    """The model shrinks in whole vectors of channels, runs measurably faster, and says what
    it was allocated against; timing itself is judged in benchmarks/compress.py."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.Conv2d(64, 96, 3, padding=1), nn.BatchNorm2d(96), nn.ReLU(),
        nn.Conv2d(96, 96, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(96, 3),
    )  # fmt: skip
    batches = _batches(4, 6, (3, 16, 16))
    result = sp.compress(model, batches[:4], batches[4:], {"speedup": 2.0}, folds=2,
                         criterion="magnitude", epochs_per_step=0, round_to="auto",
                         latency_cache=tmp_path)  # fmt: skip
    assert result.method.startswith("structured")
    assert result.latency_table is not None
    assert result.allocated_to in ("measured latency", "FLOPs", "uniform cuts")
    assert set(result.latency_table.saved) == set(result.table.layers)
    assert list(tmp_path.glob("*.json"))  # the table is kept for the next run
    widths = [m.out_channels for m in model if isinstance(m, nn.Conv2d)]
    assert widths != [64, 96, 96]
    multiple = vector_width(model)
    assert all(w % multiple == 0 for w in widths)  # whole SIMD vectors
    assert result.speedup > 1.2 and result.latency < result.dense_latency
    assert result.flops_kept < 0.8
    assert "faster, measured" in str(result)


def _flop_ratio(dense, pruned, inputs, timings=3):
    """A stand-in for timing (exact, whatever the number of timings), where a test asserts what
    a speed goal reached."""
    sample = tuple(t[:1] for t in inputs)
    return count_flops(dense, *sample).effective / count_flops(pruned, *sample).effective


def _lying_table(model, table, inputs, **_):
    """A latency table that credits the first family with 90% of the time."""
    saved = {name: (0.0,) * 4 for name in table.layers}
    saved[table.layers[0]] = (0.9,) * 4
    return LatencyModel(1.0, (0.25, 0.5, 0.75, 0.9), saved, "cpu (a test's table)")


def _timed_as_flops(monkeypatch):
    """Timing stubbed as the FLOP ratio, so that a test can assert what a speed goal reached."""
    monkeypatch.setattr(speed_goal, "measured_speedup", _flop_ratio)
    monkeypatch.setattr(sys.modules["sensiprune.compress"], "measured_speedup", _flop_ratio)


def _three_convs() -> tuple[nn.Module, list]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 24, 3, padding=1), nn.ReLU(),
        nn.Conv2d(24, 24, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(24 * 64, 3),
    )  # fmt: skip
    return model, _batches(5, 6, (3, 8, 8))


def test_a_speed_goal_keeps_the_most_accurate_budget_that_measures_the_goal(monkeypatch):
    """A table that credits one family with 90% of the time reaches no budget near the goal
    when the time really follows the FLOPs, so it is no candidate; the FLOPs' and the uniform
    cuts' budgets measure the goal, and the one more accurate after a trial is kept."""
    _timed_as_flops(monkeypatch)
    monkeypatch.setattr(sys.modules["sensiprune.compress"], "measure_latency", _lying_table)
    model, batches = _three_convs()
    result = sp.compress(model, batches[:4], batches[4:], {"speedup": 2.0}, folds=2,
                         criterion="magnitude", epochs_per_step=1)  # fmt: skip
    candidates = result.speed_candidates
    assert {c.allocated_to for c in candidates} == {"FLOPs", "uniform cuts"}
    assert all(c.within and c.speedup == pytest.approx(2.0, rel=0.02) for c in candidates)
    assert candidates[0].metric == max(c.metric for c in candidates)
    assert result.allocated_to == candidates[0].allocated_to
    assert result.method.endswith(
        "(the most accurate on the validation data, pruned and fine-tuned 1 epoch, of the 2 "
        "allocations measured within 2% of the goal)"
    )
    assert result.budget == pytest.approx(candidates[0].budget)
    assert result.speedup == pytest.approx(2.0, rel=0.05)


def test_a_goal_a_little_past_the_latency_tables_reach_is_searched_not_refused(monkeypatch, caplog):
    """The table adds each family's saving alone, so its limit is approximate: a goal past it
    (here 3x against a table that predicts at most 2.5x) is searched with the FLOPs and
    uniform cuts; only one far past it is refused (the bad-goal cases below)."""

    def short_table(model, table, inputs, **_):
        saved = {name: (0.0,) * 4 for name in table.layers}
        saved[table.layers[0]] = (0.6,) * 4
        return LatencyModel(1.0, (0.25, 0.5, 0.75, 0.9), saved, "cpu (a test's table)")

    _timed_as_flops(monkeypatch)
    monkeypatch.setattr(sys.modules["sensiprune.compress"], "measure_latency", short_table)
    caplog.set_level(logging.INFO, logger="sensiprune.speed_goal")
    model, batches = _three_convs()
    result = sp.compress(model, batches[:4], batches[4:], {"speedup": 3.0}, folds=2,
                         criterion="magnitude", epochs_per_step=0)  # fmt: skip
    assert result.allocated_to in ("FLOPs", "uniform cuts")
    # channels this few move the time in steps of 10%: the nearest try, either way
    assert 3.0 / 1.1 <= result.speedup <= 3.0 * 1.1
    tries = [r.getMessage() for r in caplog.records if r.name == "sensiprune.speed_goal"]
    for model_name in ("measured latency", "FLOPs", "uniform cuts"):  # each search ends
        assert sum(f" {model_name} keeping" in t for t in tries) <= speed_goal.CALIBRATION_TRIES


def test_a_speed_goal_prunes_with_the_channel_multiple_its_budget_measured_with(monkeypatch):
    """By default the calibrated budgets are filled up to whole vectors where that measures
    the goal (speed_goal.filled, stubbed here to say it did): the model is then cut so; an
    explicit round_to is kept as given."""
    _timed_as_flops(monkeypatch)
    filled = []
    monkeypatch.setattr(
        speed_goal, "filled", lambda _, c, *__: filled.append(c) or replace(c, round_to=8)
    )
    for round_to in (None, 1):
        filled.clear()
        model, batches = _three_convs()
        result = sp.compress(model, batches[:4], batches[4:], {"speedup": 2.0}, folds=2,
                             criterion="magnitude", epochs_per_step=0,
                             round_to=round_to)  # fmt: skip
        widths = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
        chosen = result.speed_candidates[0]
        if round_to is None:
            assert filled and chosen.round_to == 8
            assert "rounded up to multiples of 8" in result.method
            assert widths != [16, 24, 24] and all(w % 8 == 0 for w in widths)
        else:
            assert not filled and chosen.round_to == 1
            assert "rounded up" not in result.method


def test_the_speed_candidates_are_ranked_by_their_trial_and_a_single_one_is_not_tried():
    candidates = [
        SpeedCandidate(name, {}, {"a": sparsity}, 2.0, True)
        for name, sparsity in (("measured latency", 0.5), ("FLOPs", 0.3), ("uniform cuts", 0.3))
    ]
    trial = lambda candidate: 1.0 - candidate.budget["a"]  # noqa: E731
    ranked = sys.modules["sensiprune.compress"]._most_accurate(candidates, trial, 2.0)
    assert [c.allocated_to for c in ranked] == ["FLOPs", "measured latency", "uniform cuts"]
    assert [c.metric for c in ranked] == [0.7, 0.5, 0.7]  # a tie goes to the earlier
    alone = sys.modules["sensiprune.compress"]._most_accurate(candidates[:1], trial, 2.0)
    assert alone == candidates[:1] and alone[0].metric is None


def test_out_of_reach_the_trial_weighs_accuracy_against_how_far_off_the_goal_a_budget_ran():
    """A 3x goal out of reach: uniform cuts came nearest (2.90x) by collapsing; the FLOP
    budget, 2.27x, keeps three times the accuracy and is kept. The trial metric is the
    candidate's own, undiscounted."""
    candidates = [
        SpeedCandidate("uniform cuts", {}, {"a": 0.9}, 2.90, False),
        SpeedCandidate("FLOPs", {}, {"a": 0.6}, 2.27, False),
    ]
    trial = {0.9: 0.10, 0.6: 0.33}
    ranked = sys.modules["sensiprune.compress"]._most_accurate(
        candidates, lambda c: trial[c.budget["a"]], 3.0
    )
    assert [(c.allocated_to, c.metric) for c in ranked] == [
        ("FLOPs", 0.33),
        ("uniform cuts", 0.10),
    ]


def test_a_missed_speed_goal_says_which_of_the_nearest_budgets_it_kept_and_why():
    why = sys.modules["sensiprune.compress"]._why_chosen
    nearest = [
        SpeedCandidate("FLOPs", {}, {"a": 0.4}, 2.2, False, metric=0.9),
        SpeedCandidate("uniform cuts", {}, {"a": 0.6}, 2.4, False, metric=0.5),
    ]
    assert why(nearest, 1) == (
        "no allocation measured within 2% of the goal while calibrating: the most accurate on "
        "the validation data, pruned and fine-tuned 1 epoch, of 2 cost models' nearest budgets, "
        "timed again, less 1% of its metric for each 1% it measured more than 10% off the goal"
    )
    assert why(nearest[1:], 1) == (
        "no allocation measured within 2% of the goal while calibrating: the nearest"
    )


def test_a_speed_goal_cuts_every_family_alike_where_no_allocation_can_be_made(monkeypatch):
    """The last search: one sparsity in every family (timing stubbed as the FLOP ratio, and
    the latency table's and the FLOP model's allocations refused, so that only it is left)."""
    compress_module = sys.modules["sensiprune.compress"]
    allocate = speed_goal.allocate

    def uniform_only(table, **target):
        if "uniform" not in target:
            raise sp.SensipruneError("refused by the test")
        return allocate(table, **target)

    _timed_as_flops(monkeypatch)
    monkeypatch.setattr(compress_module, "measure_latency", _lying_table)
    monkeypatch.setattr(speed_goal, "allocate", uniform_only)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 3),
    )  # fmt: skip
    batches = _batches(6, 6, (3, 8, 8))
    result = sp.compress(model, batches[:4], batches[4:], {"speedup": 2.0}, folds=2,
                         criterion="magnitude", epochs_per_step=0)  # fmt: skip
    assert result.allocated_to == "uniform cuts"
    assert result.method.endswith("to uniform cuts (the only allocation measured within 2% of "
                                  "the goal)")  # fmt: skip
    assert len(set(result.budget.values())) == 1 and len(result.budget) == 2
    assert result.speedup == pytest.approx(2.0, rel=0.05)


def test_a_drop_goal_prunes_as_far_as_the_curves_allow(mlp_and_data):
    model, train, val, _ = mlp_and_data
    result = sp.compress(model, train, val, {"max_drop": 0.05}, folds=2, steps=1,
                         criterion="magnitude", epochs_per_step=0)  # fmt: skip
    assert result.predicted_drop <= 0.05
    assert result.cross_validated_drop <= 0.05  # held to the bound on the held-out folds
    assert result.one_shot_metric is not None
    assert result.params_kept < 1.0
    assert result.one_shot_metric is not None
    assert f"measured {result.dense_metric - result.one_shot_metric:+.4f}" in str(result)


def test_a_drop_goal_judges_on_the_folds_the_sparsity_the_final_budget_prunes(
    mlp_and_data, monkeypatch
):
    import sensiprune.analysis.validation as validation

    calls = []
    real = validation.allocate

    def allocate(table, **target):
        budget = real(table, **target)
        target = {k: v for k, v in target.items() if v is not None}
        calls.append((target, sum(budget.get(n, 0.0) * k for n, k in
                                  zip(table.layers, table.sizes)) / sum(table.sizes)))  # fmt: skip
        return budget

    monkeypatch.setattr(validation, "allocate", allocate)
    model, train, val, _ = mlp_and_data
    result = sp.compress(model, train, val, {"max_drop": 0.05}, folds=2, steps=1,
                         criterion="magnitude", epochs_per_step=0)  # fmt: skip
    allowed = calls[-1][1]  # the final budget of the first call: what the curves allow
    assert [t for t, _ in calls[:3]] == [{"max_drop": 0.05}] * 3
    judged = calls[3:]
    assert judged and len(judged) % 3 == 0  # each try: two folds, then the final budget
    last = judged[-3:]
    sparsity = last[0][0]["target_sparsity"]
    assert all(t == {"target_sparsity": sparsity} for t, _ in last)
    assert all(abs(s - sparsity) < 0.01 for _, s in last)  # the sparsity the folds judged
    assert sparsity <= calls[2][1] + 1e-9
    compress_module = sys.modules["sensiprune.compress"]
    margin = compress_module.BOUND_ERRORS * result.cross_validated_std / 2**0.5
    assert result.cross_validated_drop + margin <= 0.05 or len(judged) == 3 * (
        compress_module.BOUND_TRIES
    )
    assert result.params_kept == pytest.approx(1 - allowed, abs=0.05) or sparsity < allowed
    assert "NOT certified" not in result.method or len(judged) == 3 * compress_module.BOUND_TRIES


def test_a_drop_goal_the_folds_cannot_certify_says_so(mlp_and_data, monkeypatch):
    compress_module = sys.modules["sensiprune.compress"]
    monkeypatch.setattr(compress_module, "BOUND_ERRORS", 1e6)  # no spread is small enough
    monkeypatch.setattr(compress_module, "BOUND_TRIES", 2)
    model, train, val, _ = mlp_and_data
    result = sp.compress(model, train, val, {"max_drop": 0.05}, folds=2, steps=1,
                         criterion="magnitude", epochs_per_step=0)  # fmt: skip
    assert "the bound is NOT certified: after 2 tightenings" in result.method
    assert "NOT certified" in str(result)


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ({"size": 0.1}, "unknown goal 'size'"),
        ({"bytes": 0.02}, "file is out of reach"),
        ({"speedup": 0.5}, "above 1"),
        ({"speedup": float("inf")}, "above 1"),
        ({"speedup": 1000.0}, "out of reach on cpu"),
        ({"params": 0.1, "flops": 0.5}, "one goal"),
        ({"params": 0.1, "flops": 0.5, "max_drop": 0.1}, "one goal"),
        ({"speedup": 0.5, "max_drop": 0.1}, "above 1"),
        ({"params": 0.1, "max_drop": 1.5}, r"in \[0, 1\)"),
        ({"params": 0.1, "max_drp": 0.1}, "unknown goal 'max_drp'"),
        (0.5, "one goal"),
        ({"params": 1.5}, r"in \(0, 1\)"),
        ({"params": True}, "must be a number"),
        ({"max_drop": -0.1}, r"in \[0, 1\)"),
        ({"params": 0.001}, "out of reach"),
    ],
)
def test_bad_goals_are_refused_before_anything_changes(mlp_and_data, target, message):
    model, train, val, _ = mlp_and_data
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(sp.SensipruneError, match=message):
        sp.compress(model, train, val, target)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
