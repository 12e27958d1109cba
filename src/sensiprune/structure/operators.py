"""Which torch functions and tensor methods the channel walk knows, by what they do to
channels, and readers of an fx node's arguments that the rules share."""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx

PASS_FUNCTIONS = {
    torch.relu, F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.gelu, F.silu, F.mish,
    torch.sigmoid, F.sigmoid, torch.tanh, F.tanh, F.hardswish, F.hardsigmoid, F.hardtanh,
    F.softplus, F.dropout, F.dropout2d, torch.clamp, torch.abs, torch.exp, torch.neg,
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
    F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.interpolate, operator.neg,
    torch.rsqrt, torch.sqrt, torch.square, torch.reciprocal, torch.log, torch.erf, torch.cos,
    torch.sin, F.softsign, F.logsigmoid, F.tanhshrink, torch.logical_not, operator.invert,
}  # fmt: skip
PASS_METHODS = {
    "relu", "sigmoid", "tanh", "clamp", "abs", "exp", "neg", "contiguous", "clone", "detach",
    "float", "to", "type_as", "relu_", "sigmoid_", "rsqrt", "sqrt", "square", "reciprocal",
    "log", "erf", "cos", "sin", "half", "bfloat16", "double", "type", "bool", "logical_not",
}  # fmt: skip
ELEMENTWISE = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.imul,
    torch.add, torch.sub, torch.mul, torch.div, operator.pow, torch.pow, torch.maximum,
    torch.minimum, torch.where, operator.gt, operator.lt, operator.ge, operator.le, operator.eq,
    operator.ne, operator.and_, operator.or_, torch.gt, torch.lt, torch.ge, torch.le, torch.eq,
    torch.ne, torch.logical_and, torch.logical_or, torch.addcmul, torch.addcdiv,
}  # fmt: skip
ELEMENTWISE_METHODS = {
    "add", "sub", "mul", "div", "add_", "mul_", "sub_", "div_", "pow", "masked_fill", "gt", "lt",
    "ge", "le", "eq", "ne", "where", "addcmul", "addcdiv",
}  # fmt: skip
RESHAPING_FUNCTIONS = {
    torch.flatten, torch.cat, torch.concat, operator.getitem, torch.split, torch.chunk,
    torch.squeeze, torch.unsqueeze,
}  # fmt: skip
RESHAPING_METHODS = {
    "size", "dim", "numel", "flatten", "view", "reshape", "permute", "transpose", "mean", "sum",
    "amax", "split", "chunk", "squeeze", "unsqueeze", "view_as", "reshape_as", "repeat",
}  # fmt: skip
SPLIT_RESHAPES = {
    "view", "reshape", "flatten", "squeeze", "unsqueeze", "view_as", "reshape_as", "unflatten",
}  # fmt: skip
# what the walk understands moves channels without multiplying them: it has no FLOPs to count
FLOP_FREE_FUNCTIONS = PASS_FUNCTIONS | ELEMENTWISE | RESHAPING_FUNCTIONS
FLOP_FREE_METHODS = PASS_METHODS | ELEMENTWISE_METHODS | RESHAPING_METHODS


def name_of(node: fx.Node) -> str:
    return getattr(node.target, "__name__", str(node.target))


def order_of(node: fx.Node, ndim: int) -> list[int]:
    """Where each dimension comes from after a permute or transpose."""
    dims = list(node.args[1:]) or list(node.kwargs.values())
    if name_of(node) == "transpose":
        a, b = (int(x) % ndim for x in dims[:2])
        order = list(range(ndim))
        order[a], order[b] = order[b], order[a]
        return order
    return [int(x) % ndim for x in (dims[0] if isinstance(dims[0], (list, tuple)) else dims)]


def dims_arg(node: fx.Node, ndim: int) -> set[int] | None:
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    if dims is None:
        return None
    return {int(x) % ndim for x in (dims if isinstance(dims, (list, tuple)) else [dims])}


def size_args(node: fx.Node) -> tuple:
    """The sizes of ``view(B, C, -1)`` or ``view((B, C, -1))``: one tuple either way."""
    args = node.args
    return tuple(args[1]) if len(args) == 2 and isinstance(args[1], (list, tuple)) else args[1:]


def module_of(node: fx.Node) -> str:
    """The name of the module whose code ran ``node`` ("" for the model itself)."""
    stack = node.meta.get("nn_module_stack") or {}
    return next(reversed(stack.values()))[0] if stack else ""
