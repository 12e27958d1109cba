"""Values computed from parameters keep track of which parameter dimension is which."""

from __future__ import annotations

from sensiprune.structure.param_flow import derive, read


def test_a_standardised_weight_is_its_parameter_again_once_reshaped_back():
    weight = read("stem.weight", (8, 3, 3, 3))
    flat = derive("reshape", (None, 1, 8, -1), [(weight, (8, 3, 3, 3))], (1, 8, 27))
    assert flat.sources[0].dims == (None, 0, None)
    back = derive("reshape_as", (None, None), [(flat, (1, 8, 27))], (8, 3, 3, 3))
    assert back.sources[0].dims == (0, 1, 2, 3)


def test_a_gain_combined_with_a_weight_keeps_its_own_dimension():
    weight, gain = read("c.weight", (8, 3, 3, 3)), read("c.gain", (8, 1, 1, 1))
    out = derive("mul", (), [(weight, (8, 3, 3, 3)), (gain, (8, 1, 1, 1))], (8, 3, 3, 3))
    dims = {s.attr: s.dims for s in out.sources}
    assert dims == {"weight": (0, 1, 2, 3), "gain": (0, None, None, None)}


def test_transpose_and_expand_move_the_dimensions():
    w = read("m.w", (4, 6))
    assert derive("t", (None,), [(w, (4, 6))], (6, 4)).sources[0].dims == (1, 0)
    token = read("cls_token", (1, 1, 6))
    expanded = derive("expand", (None, 2, -1, -1), [(token, (1, 1, 6))], (2, 1, 6))
    assert expanded.along(2) == [(expanded.sources[0], 2)]
