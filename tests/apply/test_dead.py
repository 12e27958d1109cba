"""Units no layer reads: masked with what produces them, exactly, or not at all."""

from __future__ import annotations

import torch
from torch import nn

from sensiprune.apply.dead import mask_dead_units
from sensiprune.apply.masks import apply_masks, mask_of
from sensiprune.measure import count_parameters
from sensiprune.targets import find_targets


def _mask(model: nn.Module, name: str, keep: torch.Tensor) -> None:
    apply_masks({name: find_targets(model)[name]}, {name: keep})


def test_units_whose_readers_are_all_pruned_go_with_their_weights_and_bias_in_cascade(mlp):
    x = torch.randn(4, 8)
    head = torch.zeros(3, 12, dtype=torch.bool)
    head[:, 0] = True  # the head reads fc2's unit 0 only
    _mask(mlp, "head.weight", head)
    fc2 = torch.ones(12, 16, dtype=torch.bool)
    fc2[0, 8:] = False  # which reads fc1's units 0-7 only
    _mask(mlp, "fc2.weight", fc2)
    before, kept = mlp(x), count_parameters(mlp).nonzero
    masked = mask_dead_units(mlp, x)
    assert torch.allclose(mlp(x), before)
    assert not mask_of(mlp.fc2, "weight")[1:].any() and not mask_of(mlp.fc2, "bias")[1:].any()
    fc1 = mask_of(mlp.fc1, "weight")
    assert fc1[:8].all() and not fc1[8:].any()
    assert mask_of(mlp.fc1, "bias").tolist() == [True] * 8 + [False] * 8
    # fc2: 11 rows of 16 (8 of row 0's already gone) and 11 biases; fc1: 8 rows of 8, 8 biases
    assert masked == kept - count_parameters(mlp).nonzero == 11 * 16 + 11 + 8 * 8 + 8
    assert mask_dead_units(mlp, x) == 0  # nothing left to find


def test_a_convolutions_unread_channels_take_their_filters_and_batchnorm_entries():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(),
        nn.Linear(6 * 4 * 4, 5),
    ).eval()  # fmt: skip
    x = torch.randn(2, 3, 4, 4)
    fc = torch.ones(5, 6 * 16, dtype=torch.bool)
    fc[:, 2 * 16 : 3 * 16] = False  # every position of channel 2, flattened
    _mask(model, "4.weight", fc)
    before = model(x)
    assert mask_dead_units(model, x) == 3 * 9 + 1 + 2
    assert torch.allclose(model(x), before)
    assert mask_of(model[0], "weight").flatten(1).any(1).tolist() == [1, 1, 0, 1, 1, 1]
    assert model[1].weight[2] == 0 and model[1].bias[2] == 0


def test_a_unit_whose_value_still_reaches_others_through_a_layernorm_is_kept():
    """Its readers are all pruned, but the norm's statistics read it: masking it would change
    the output, which the check on the example batch sees."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Linear(6, 2))
    x = torch.randn(3, 4)
    fc = torch.ones(2, 6, dtype=torch.bool)
    fc[:, 0] = False
    _mask(model, "2.weight", fc)
    kept = count_parameters(model).nonzero
    assert mask_dead_units(model, x) == 0
    assert count_parameters(model).nonzero == kept and mask_of(model[0], "weight") is None
