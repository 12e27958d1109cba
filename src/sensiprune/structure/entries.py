"""A tensor with an entry per head that a block is handed from outside, cut where it enters.

ALiBi (BLOOM, MPT) makes one bias per head from the head count, outside the blocks, and hands
it to every block's attention, which adds it to the scores. The tensor carries no channels
the walk could follow back to a layer, yet its head entries must go with each block's heads.
Where the added operand is that argument (or it sliced along other dimensions, cast, scaled),
the module it entered reads only its kept heads' entries once cut
(handlers/input_slices.py); anywhere else the heads are kept.
"""

from __future__ import annotations

import itertools
import operator
from typing import TYPE_CHECKING

import torch
from torch import fx

from sensiprune.handlers import input_slices
from sensiprune.handlers.base import param_role
from sensiprune.structure.channels import folded_period, node_shape
from sensiprune.structure.operators import module_of

if TYPE_CHECKING:
    from sensiprune.structure.graph import ChannelTracer

# operations that leave every position of a tensor where it was (casts, copies)
_SAME_POSITIONS = frozenset({
    "to", "contiguous", "float", "half", "bfloat16", "double", "type", "type_as", "clone",
    "detach",
})  # fmt: skip
_SCALAR_ARITHMETIC = frozenset({
    operator.mul, operator.add, operator.sub, operator.truediv, operator.neg, torch.mul,
    torch.add, torch.sub, torch.div, "mul", "add", "sub", "div",
})  # fmt: skip


def sliced_on_entry(
    t: ChannelTracer, consumer: fx.Node, operand: fx.Node, dim: int, slots: list[int]
) -> bool:
    """Whether ``operand``, met by ``consumer`` with one entry per channel of ``slots`` along
    its ``dim``, is an argument of a module around ``consumer`` that only this use reads:
    it is then recorded as that module's input, cut with the heads. False leaves it to the
    caller (which keeps the channels)."""
    within = module_of(consumer)
    chain, node = [consumer], operand
    while (entry := _entry(node, within)) is None:
        source = _same_positions_source(node, dim)
        if source is None:
            return False
        chain.append(node)
        node = source
    module, argument = entry
    chain.append(node)
    for user_at, node_at in itertools.pairwise(chain):  # every read inside is this one
        others = [u for u in node_at.users if u is not user_at and not u.meta.get("no_tensor")]
        if any(_inside(module_of(u), module) for u in others):  # sizes read follow the cut
            return False
    period = folded_period(slots)
    if period is None:
        return False
    name = input_slices.buffer_name(argument, dim, period)
    t.member(module, param_role("in", name, 0), slots[:period])
    return True


def _entry(node: fx.Node, within: str) -> tuple[str, str] | None:
    """The innermost module around ``within`` that ``node`` entered, and as which argument."""
    found = [(m, a) for m, a in node.meta.get("enters", ()) if _inside(within, m)]
    return max(found, key=lambda entry: len(entry[0]), default=None)


def _inside(name: str, module: str) -> bool:
    return name == module or name.startswith(module + ".")


def _same_positions_source(node: fx.Node, dim: int) -> fx.Node | None:
    """The tensor ``node`` takes every position of ``dim`` from, in place: a cast, a copy, a
    product with a number, or an index that slices other dimensions only."""
    args = node.args
    if not args or not isinstance(args[0], fx.Node) or node_shape(args[0]) is None:
        return None
    if node.op == "call_method" and node.target in _SAME_POSITIONS:
        return args[0]
    if node.target in _SCALAR_ARITHMETIC and all(not isinstance(a, fx.Node) for a in args[1:]):
        return args[0]
    if node.target is operator.getitem and len(args) == 2:
        index = args[1] if isinstance(args[1], tuple) else (args[1],)
        if all(isinstance(i, slice) for i in index) and (
            len(index) <= dim or index[dim] == slice(None)
        ):
            return args[0]
    return None
