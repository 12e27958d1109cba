"""The pre-hook that hands a block only its kept heads' entries of an argument."""

from __future__ import annotations

import functools

import torch
from torch import nn

import sensiprune as sp
from sensiprune.handlers import input_slices
from sensiprune.handlers.layouts import layout_for


class _Reads(nn.Module):
    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        return bias


def _cut(module: nn.Module, name: str, keep: list[int]) -> None:
    layout = layout_for(module, f"in@{name}:0")
    layout.after(module, keep)


def test_the_argument_is_sliced_by_position_and_by_keyword():
    module, bias = _Reads(), torch.arange(12.0).reshape(3, 4)
    name = input_slices.buffer_name("bias", 1, 4)
    assert layout_for(module, f"in@{name}:0").size(module) == 4
    _cut(module, name, [0, 2])
    assert layout_for(module, f"in@{name}:0").size(module) == 2
    expected = bias[:, [0, 2]]
    assert torch.equal(module(None, bias), expected)
    assert torch.equal(module(None, bias=bias), expected)
    assert torch.equal(module(bias=bias, x=None), expected)


def test_a_forward_wrapped_on_the_instance_is_read_through_to_the_one_it_wraps():
    module = _Reads()
    original = module.forward

    @functools.wraps(original)
    def wrapped(*args, **kwargs):  # as accelerate's hooks replace a module's forward
        return original(*args, **kwargs)

    module.forward = wrapped
    assert input_slices.positional_arguments(module) == ("x", "bias")
    assert input_slices.positional_arguments(_Reads()) == ("x", "bias")
    name = input_slices.buffer_name("bias", 1, 4)
    _cut(module, name, [1, 3])
    bias = torch.arange(12.0).reshape(3, 4)
    assert torch.equal(module(None, bias), bias[:, [1, 3]])  # sliced by position too


def test_heads_folded_into_the_batch_are_sliced_in_every_batch_element():
    module = _Reads()
    name = input_slices.buffer_name("bias", 0, 3)
    _cut(module, name, [1])
    folded = torch.arange(6.0)[:, None]  # (B * heads, 1), B = 2
    assert module(None, folded).reshape(-1).tolist() == [1.0, 4.0]


def test_a_saved_slice_is_put_back_with_every_head_until_its_state_loads(tmp_path):
    model = nn.Sequential(_Reads())
    name = input_slices.buffer_name("bias", 0, 4)
    _cut(model[0], name, [3])
    assert input_slices.sliced(model)
    fresh = nn.Sequential(_Reads())
    input_slices.reinstall(fresh, [f"0.{name}", "0.weight"])
    assert fresh[0].get_buffer(name).tolist() == [0, 1, 2, 3]
    assert not input_slices.sliced(fresh)
    sp.save(model, tmp_path / "saved")
    loaded = sp.load(tmp_path / "saved", lambda: nn.Sequential(_Reads()))
    assert torch.equal(loaded[0](None, torch.arange(4.0)), torch.tensor([3.0]))
