"""Parameter, FLOP and latency measurements."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sensiprune as sp
from sensiprune.measure import (
    count_flops,
    count_parameters,
    countable_by_shape,
    counted_forward,
    counting_flops,
    latency,
    layer_flops,
    speedup,
)
from tests.architectures import ZOO


def test_parameter_counts_follow_masks(mlp):
    total = sum(p.numel() for p in mlp.parameters())
    assert count_parameters(mlp).nonzero == total
    sp.prune(mlp, 0.5, criterion="magnitude", scope="layer")
    pruned = round(0.5 * 128) + round(0.5 * 192) + round(0.5 * 36)
    counted = count_parameters(mlp)
    assert (counted.total, counted.nonzero) == (total, total - pruned)
    assert counted.compression == total / (total - pruned)


def test_flops_match_the_layer_arithmetic(mlp):
    x = torch.randn(5, 8)
    dense_flops = 2 * 5 * (8 * 16 + 16 * 12 + 12 * 3)
    assert count_flops(mlp, x).dense == dense_flops
    sp.prune(mlp, 0.5, criterion="magnitude", scope="layer")
    flops = count_flops(mlp, x)
    assert flops.dense == dense_flops
    assert flops.effective == dense_flops // 2


def test_latency_is_a_positive_median(mlp):
    assert latency(mlp, torch.randn(4, 8), warmup=1, repeats=3) > 0


@pytest.mark.parametrize(
    "name", ["resnet", "lstm", "bigru-2-layer", "transformer", "instance-norm-prelu"]
)
def test_total_flops_agree_with_torchs_flop_counter(name):
    factory, shape = ZOO[name]
    torch.manual_seed(0)
    model, x = factory(), torch.randn(shape)
    with counting_flops(model, per_module=True) as reference:
        model(x)
    assert reference.get_total_flops() > 0
    assert counted_forward(model, [x], "does not run")[0] == reference.get_total_flops()


@pytest.mark.parametrize(
    ("layer", "shape"),
    [
        (nn.Linear(6, 5), (2, 3, 6)),
        (nn.Conv1d(4, 6, 3, groups=2), (2, 4, 9)),
        (nn.Conv2d(3, 4, 3, stride=2, padding=1), (2, 3, 7, 7)),
        (nn.Conv3d(2, 3, 2, stride=2), (1, 2, 4, 4, 4)),
        (nn.ConvTranspose2d(3, 4, 3, stride=2), (2, 3, 5, 5)),
        (nn.BatchNorm2d(3), (2, 3, 5, 5)),
        (nn.GELU(), (2, 7)),
    ],
)
def test_layer_flops_from_shapes_agree_with_torchs_flop_counter(layer, shape):
    args = (torch.randn(shape),)
    assert countable_by_shape(layer, args)
    with counting_flops(layer, per_module=True) as reference:
        output = layer(*args)
    assert layer_flops(layer, args, output) == reference.get_total_flops()


def test_only_exact_known_layers_on_batched_input_are_counted_from_shapes():
    class Scaled(nn.Linear):  # a subclass may compute anything in forward
        pass

    assert not countable_by_shape(Scaled(6, 5), (torch.randn(2, 6),))
    assert not countable_by_shape(nn.Linear(6, 5), (torch.randn(6),))
    assert not countable_by_shape(nn.Conv2d(3, 4, 3), (torch.randn(3, 8, 8),))
    assert not countable_by_shape(nn.LSTM(3, 4), (torch.randn(2, 5, 3),))


def test_speedup_says_which_model_is_faster_and_leaves_both_as_they_were():
    torch.manual_seed(0)
    heavy = torch.nn.Sequential(*(torch.nn.Linear(256, 256) for _ in range(16)))
    light = torch.nn.Sequential(torch.nn.Linear(256, 256))
    x = torch.randn(64, 256)
    assert speedup(heavy, light, x, rounds=3, repeats=3) > 2  # 16x the work: far beyond noise
    assert speedup(light, heavy, x, rounds=3, repeats=3) < 0.5
    assert heavy.training and light.training  # eval only while timing
