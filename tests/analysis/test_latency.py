"""The latency table a speed goal is allocated against: measured per family, interpolated,
cached per architecture and device, and used by allocate."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sensiprune as sp
from sensiprune.analysis import latency as latency_module
from sensiprune.analysis.latency import LatencyModel, measure_latency, monotone
from sensiprune.analysis.sensitivity import SensitivityTable


def _wide_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 48, 3, padding=1), nn.BatchNorm2d(48), nn.ReLU(),
        nn.Conv2d(48, 64, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 3),
    ).eval()  # fmt: skip


def _structured_table(model: nn.Module, x: torch.Tensor) -> SensitivityTable:
    return sp.sensitivity(model, lambda m: 0.0, [0.5], structured=True, example_inputs=x,
                          show_progress=False)  # fmt: skip


def test_saving_interpolates_between_points_and_extends_the_last_segment():
    lut = LatencyModel(10.0, (0.25, 0.5), {"a": (1.0, 3.0), "b": (0.5, 0.5)}, "cpu")
    assert lut.saving("a", 0.0) == 0.0
    assert lut.saving("a", 0.125) == pytest.approx(0.5)
    assert lut.saving("a", 0.25) == pytest.approx(1.0)
    assert lut.saving("a", 0.375) == pytest.approx(2.0)
    assert lut.saving("a", 0.75) == pytest.approx(5.0)  # past the last point
    assert lut.saving("unknown", 0.5) == 0.0
    assert lut.kept({"a": 0.5, "b": 0.5}) == pytest.approx(10.0 - 3.0 - 0.5)
    assert LatencyModel.from_json(lut.to_json()) == lut


def test_noisy_savings_are_pooled_not_maxed():
    assert monotone([1.0, 3.0, 2.0, 4.0]) == (1.0, 2.5, 2.5, 4.0)
    assert monotone([5.0, 4.0, 3.0, 2.0]) == (3.5, 3.5, 3.5, 3.5)  # a running max says 5
    assert monotone([-1.0, 0.5, 0.2, 0.1]) == pytest.approx((0.0, 0.8 / 3, 0.8 / 3, 0.8 / 3))


def test_a_family_cut_further_saves_more_and_the_table_is_cached(tmp_path, monkeypatch):
    model = _wide_cnn()
    x = torch.randn(16, 3, 16, 16)
    table = _structured_table(model, x)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lut = measure_latency(model, table, (x,), fractions=(0.5, 0.9), cache_dir=tmp_path)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert set(lut.saved) == set(table.layers) and lut.total > 0
    for values in lut.saved.values():
        assert values[0] <= values[1] < lut.total  # no dips: noise is not a slowdown
    assert "torch.float32" in lut.device and f"{torch.get_num_threads()} threads" in lut.device
    assert len(list(tmp_path.glob("*.json"))) == 1

    def untimed(*args, **kwargs):
        raise AssertionError("a cached table is not timed again")

    monkeypatch.setattr(latency_module, "speedup", untimed)
    monkeypatch.setattr(latency_module, "latency", untimed)
    assert measure_latency(model, table, (x,), fractions=(0.5, 0.9), cache_dir=tmp_path) == lut
    with pytest.raises(AssertionError, match="not timed again"):  # another batch: timed
        measure_latency(model, table, (x[:4],), fractions=(0.5, 0.9), cache_dir=tmp_path)
    (cached,) = tmp_path.glob("*.json")
    cached.write_text("{damaged")
    with pytest.raises(AssertionError, match="not timed again"):  # a damaged entry: timed
        measure_latency(model, table, (x,), fractions=(0.5, 0.9), cache_dir=tmp_path)


def test_bad_latency_input_is_one_line(tmp_path):
    model = _wide_cnn()
    x = torch.randn(2, 3, 8, 8)
    unstructured = sp.sensitivity(model, lambda m: 0.0, [0.5], show_progress=False)
    with pytest.raises(sp.SensipruneError, match="structured=True"):
        measure_latency(model, unstructured, (x,))
    table = _structured_table(model, x)
    with pytest.raises(sp.SensipruneError, match=r"in \(0, 1\)"):
        measure_latency(model, table, (x,), fractions=(0.5, 1.0))
    taken = tmp_path / "taken"
    taken.write_text("keep me")
    with pytest.raises(sp.SensipruneError, match="not a directory"):
        measure_latency(model, table, (x,), cache_dir=taken)
    assert taken.read_text() == "keep me"


def test_allocate_spends_sensitivity_where_the_seconds_are():
    """Two families equally sensitive: the one whose channels cost more time goes first, and
    the target is met under the table."""
    table = SensitivityTable(
        "magnitude", 1.0, ("slow", "fast"), (100, 100), (0.25, 0.5, 0.75, 0.9),
        ((0.99, 0.98, 0.9, 0.8), (0.99, 0.98, 0.9, 0.8)),
    )  # fmt: skip
    lut = LatencyModel(1.0, (0.5,), {"slow": (0.4,), "fast": (0.05,)}, "test")
    budget = sp.allocate(table, target_latency=0.7, latency=lut)
    assert budget.get("slow", 0.0) > budget.get("fast", 0.0)
    assert lut.kept(dict(budget)) == pytest.approx(0.7, abs=0.01)
    with pytest.raises(sp.SensipruneError, match="latency table"):
        sp.allocate(table, target_latency=0.7)
    with pytest.raises(sp.SensipruneError, match="cannot be met"):
        sp.allocate(table, target_latency=0.1, latency=lut)
    with pytest.raises(sp.SensipruneError, match="exactly one"):
        sp.allocate(table, target_latency=0.7, target_flops=0.5, latency=lut)


def test_allocate_crosses_a_flat_stretch_of_the_table_to_the_saving_behind_it():
    """Time falls at whole vectors: a family may save nothing until half its channels go,
    then much. 1% steps that save nothing must not end the search short of the target."""
    table = SensitivityTable(
        "magnitude", 1.0, ("stepped", "smooth"), (64, 64), (0.25, 0.5, 0.75, 0.9),
        ((0.99, 0.98, 0.97, 0.96), (0.9, 0.8, 0.7, 0.6)),
    )  # fmt: skip
    lut = LatencyModel(1.0, (0.25, 0.5, 0.75), {"stepped": (0.0, 0.0, 0.5),
                                                 "smooth": (0.05, 0.1, 0.15)}, "test")  # fmt: skip
    budget = sp.allocate(table, target_latency=0.5, latency=lut)
    assert budget["stepped"] >= 0.7  # the cheap family, past its flat stretch
    assert lut.kept(dict(budget)) <= 0.5 + 1e-9
