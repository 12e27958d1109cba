"""The handler registry: one handler per module type, found for subclasses too."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sensiprune as sp
from sensiprune.handlers.base import (
    HANDLERS,
    Cut,
    Handler,
    Layout,
    countable_by_shape,
    fixed,
    handler_for,
    input_features,
    input_matrix_of,
    layer_flops,
    register,
)
from sensiprune.measure import module_flops


class ScaledLinear(nn.Linear):
    """A subclass that changes forward: its channels still flow as a Linear's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * super().forward(x)


def test_a_subclass_gets_its_nearest_base_types_handler_but_no_shape_flops():
    layer = ScaledLinear(4, 3)
    assert handler_for(layer) is HANDLERS[nn.Linear]
    assert countable_by_shape(nn.Linear(4, 3), (torch.randn(2, 4),))
    assert not countable_by_shape(layer, (torch.randn(2, 4),))  # its forward may differ


def test_a_type_has_one_handler(monkeypatch):
    monkeypatch.setattr("sensiprune.handlers.base.HANDLERS", dict(HANDLERS))
    with pytest.raises(ValueError, match="has a handler already"):
        register(nn.Linear, handler=Handler())


class Untraceable(nn.Module):
    """A scale per channel behind an op no tracer follows: an opaque leaf of the graph."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.arange(1.0, channels + 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.from_numpy(x.detach().numpy().copy())
        return y * self.scale.view(1, -1, 1, 1)


def _scaled(t, node, layer, module, flow):
    along = t.along(flow, 1, module.scale.numel())
    t.channelwise(layer, along.slots)
    return along


def _prune_around_untraceable() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 1), Untraceable(6), nn.Conv2d(6, 2, 1)).eval()
    x = torch.randn(1, 3, 4, 4)
    sp.prune(model, 0.5, structured=True, example_inputs=x, ignore=[model[2]], scope="layer")
    model(x)  # runs
    return model


def test_a_new_module_type_is_one_registration(monkeypatch):
    assert _prune_around_untraceable()[0].out_channels == 6  # opaque: its channels stay
    monkeypatch.setattr("sensiprune.handlers.base.HANDLERS", dict(HANDLERS))
    scale = Layout(fixed(Cut("scale", 0)), (), count=lambda module: module.scale.numel())
    register(Untraceable, handler=Handler(_scaled, {"channel": scale}))
    model = _prune_around_untraceable()
    assert model[0].out_channels == 3 and model[1].scale.numel() == 3
    kept = model[1].scale.detach().long() - 1  # the scales name the channels that stayed
    assert kept.tolist() == sorted(kept.tolist()) and len(set(kept.tolist())) == 3


def test_input_features_exist_for_layer_weights_only():
    assert input_features(nn.Linear(3, 2), "weight") is not None
    assert input_features(nn.Linear(3, 2), "bias") is None
    assert input_features(nn.ConvTranspose2d(3, 2, 3), "weight") is None
    assert input_matrix_of(nn.Conv2d(4, 4, 3, groups=2), "weight") is None
    assert input_matrix_of(nn.Conv2d(4, 4, 3), "weight") is not None


@pytest.mark.parametrize(
    ("layer", "shape"),
    [
        (nn.InstanceNorm2d(4, affine=True), (2, 4, 5, 5)),
        (nn.BatchNorm2d(4), (2, 4, 5, 5)),
        (nn.LayerNorm(5), (2, 4, 5)),
        (nn.Conv3d(4, 2, 3), (2, 4, 5, 5, 5)),
        (nn.ConvTranspose2d(4, 2, 3, stride=2), (2, 4, 5, 5)),
        (nn.Linear(5, 3), (2, 4, 5)),
        (nn.AdaptiveAvgPool2d(1), (2, 4, 5, 5)),
    ],
)
def test_flops_from_shapes_are_what_torchs_counter_counts(layer, shape):
    x = torch.randn(shape)
    assert countable_by_shape(layer, (x,))
    with torch.no_grad():
        output = layer.eval()(x)
    assert layer_flops(layer, (x,), output) == module_flops(layer, x)[0]
