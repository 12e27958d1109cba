"""Tracing: symbolic first, then on the example inputs for forwards that branch on values."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

import sensiprune as sp
from sensiprune.structure.tracing import trace


class _BranchingRoot(nn.Module):
    """Control flow in the model's own forward: fx alone cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 16)
        self.b = nn.Linear(16, 16)
        self.c = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x))
        for _ in range(len(x) // 4 + 1):  # a loop over a size
            h = h + torch.relu(self.b(h))
        if h.mean() > -1e9:  # a branch on a value
            h = h * 2
        return self.c(h)


class _UnreachedLayer(_BranchingRoot):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x))
        if h.sum() > 1e9:
            h = self.b(h)
        return self.c(h)


def test_a_forward_that_branches_on_values_is_traced_on_the_example_inputs():
    torch.manual_seed(0)
    model, x = _BranchingRoot(), torch.randn(5, 4)
    dense = copy.deepcopy(model)
    graph, opaque = trace(model, [x])
    assert opaque == {} and not any(n.target == "mean" for n in graph.nodes)
    torch.testing.assert_close(fx.Interpreter(model, graph=graph).run(x), model(x))
    result = sp.prune(
        model, 0.5, criterion="magnitude", structured=True, example_inputs=x, scope="layer"
    )
    assert model.a.out_features == 8 and model.b.in_features == 8 and model.c.in_features == 8
    assert result.flops_after < result.flops_before and result.untouched == ()
    assert model(torch.randn(9, 4)).shape == dense(torch.randn(9, 4)).shape  # other sizes run


def test_a_layer_off_the_traced_path_is_refused_and_the_model_kept():
    torch.manual_seed(0)
    model, x = _UnreachedLayer(), torch.randn(5, 4)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(sp.SensipruneError, match="layer 'b' is not used on example_inputs"):
        sp.prune(model, 0.5, criterion="magnitude", structured=True, example_inputs=x)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def _returns_a_tuple(forward):
    """A decorator as Hugging Face writes them: ``(self, *args, **kwargs)`` around forward."""

    @functools.wraps(forward)
    def wrapper(self, *args, **kwargs):
        return (forward(self, *args, **kwargs),)

    return wrapper


class _Cache:
    """An object fx cannot record, returned beside the output (a key/value cache)."""


class _Decorated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 16)
        self.b = nn.Linear(16, 3)

    @_returns_a_tuple
    def forward(self, x: torch.Tensor, scale: float = 1.0, **kwargs) -> torch.Tensor:
        position = torch.ones(x.shape[0], 1)  # a size read from the input
        h = nn.ReLU()(self.a(x) + position)  # a module made inside forward
        return self.b(h) * scale, _Cache()


def test_a_decorated_forward_with_sizes_from_inputs_and_modules_made_inside_is_traced():
    torch.manual_seed(0)
    model, x = _Decorated(), torch.randn(5, 4)
    graph, opaque = trace(model, [x])
    assert opaque == {}
    assert any(n.target is torch.ones for n in graph.nodes)
    assert any(n.target is torch.relu or n.target is F.relu for n in graph.nodes)
    result = sp.prune(
        model, 0.5, criterion="magnitude", structured=True, example_inputs=x, scope="layer"
    )
    assert model.a.out_features == 8 and model.b.in_features == 8
    assert result.untouched == ()
    assert model(x)[0][0].shape == (5, 3)


class _TrainingOnlyToken(_BranchingRoot):
    """A parameter of the model itself that only training uses, like a mask embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.mask_token = nn.Parameter(torch.zeros(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.sum() > 0:
            x = x + self.mask_token
        return super().forward(x)


def test_a_parameter_the_traced_path_does_not_use_is_reported_not_refused():
    torch.manual_seed(0)
    model, x = _TrainingOnlyToken().eval(), torch.randn(5, 4)
    result = sp.prune(
        model, 0.5, criterion="magnitude", structured=True, example_inputs=x, scope="layer"
    )
    assert model.b.in_features == 8 and model.mask_token.shape == (4,)
    assert result.untouched == ("mask_token: not used on example_inputs, so it is left as it is",)


class _CachingBias(nn.Module):
    """Keeps a value computed in forward in a dict, as timm's attention bias caches do."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.bias = nn.Parameter(torch.zeros(4))
        self.cache: dict[str, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if "bias" not in self.cache:
            self.cache["bias"] = self.bias * 2
        return self.fc(x) + self.cache["bias"]


def test_what_a_forward_caches_in_its_modules_while_traced_is_put_back():
    model, x = _CachingBias(), torch.randn(3, 4)
    for _ in range(2):  # a second trace must not read the first one's traced value
        graph, _ = trace(model, [x])
        assert model.cache == {}
        torch.testing.assert_close(fx.Interpreter(model, graph=graph).run(x), model.fc(x))
