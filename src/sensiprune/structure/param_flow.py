"""Which parameter dimensions a value computed from parameters still carries.

A module built from functional ops reads its own tensors: ``F.conv2d(x, self.weight)``,
``x * self.gamma``, timm's weight-standardised convs (``self.weight`` reshaped, normalised per
output row, scaled by ``self.gain`` and reshaped back). The channel walk follows each such value
from the ``get_attr`` that read it, as a :class:`ParamFlow`: for every parameter it derives
from, which of its own dimensions is which dimension of that parameter. A rule that meets it
(a conv's weight, a per-channel scale) then knows which tensor of which module to cut, along
which dimension, whatever the module's type.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sensiprune.structure.channels import index_keeps_dim


@dataclass(frozen=True)
class Source:
    """Parameter (or buffer) ``attr`` of module ``owner``, of shape ``shape``: ``dims[i]`` is
    the parameter dimension that dimension i of the value is, or None."""

    owner: str
    attr: str
    shape: tuple[int, ...]
    dims: tuple[int | None, ...]

    def mapped(self, dims: tuple[int | None, ...]) -> Source:
        return Source(self.owner, self.attr, self.shape, dims)


@dataclass(frozen=True)
class ParamFlow:
    sources: tuple[Source, ...]

    def along(self, dim: int) -> list[tuple[Source, int]]:
        """The sources whose parameter dimension sits at ``dim`` of the value, with it."""
        return [(s, s.dims[dim]) for s in self.sources if s.dims[dim] is not None]


def read(target: str, shape: tuple[int, ...]) -> ParamFlow:
    """A parameter or buffer as a ``get_attr`` reads it: every dimension its own."""
    owner, _, attr = target.rpartition(".")
    return ParamFlow((Source(owner, attr, shape, tuple(range(len(shape)))),))


_PERMUTING = {"permute", "transpose", "t", "swapaxes", "movedim", "getattr"}
_RESHAPING = {
    "view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as",
}  # fmt: skip
_BROADCASTING = {"expand", "expand_as", "broadcast_to", "repeat"}


def derive(
    name: str, args: tuple, inputs: list[tuple[ParamFlow, tuple[int, ...]]], out: tuple[int, ...]
) -> ParamFlow | None:
    """The flow of ``name(*args)`` computed from parameters only: ``inputs`` are the parameter
    flows among its arguments with their shapes, ``out`` its output shape. A value that
    regains a source's exact shape is that parameter again, dimension by dimension: weight
    reparametrisations (standardisation, weight norm, a gain) keep their rows and columns."""
    if name in _PERMUTING or name in _RESHAPING or name in _BROADCASTING or name == "getitem":
        flow, shape = inputs[0]  # the parameter moved: the other arguments are sizes
        moved = [(s, _moved(name, args, s.dims, shape, out)) for s in flow.sources]
        return _regained([s.mapped(d) for s, d in moved if d is not None], out)
    # element-wise or per-row arithmetic (a gain, a standardisation): dimensions line up
    # from the right, as broadcasting lines them up
    sources = [
        s.mapped(_right_aligned(s.dims, shape, out)) for flow, shape in inputs for s in flow.sources
    ]
    return _regained(sources, out)


def _moved(
    name: str, args: tuple, dims: tuple[int | None, ...], before: tuple[int, ...], out: tuple
) -> tuple[int | None, ...] | None:
    if name in _PERMUTING:
        order = _permutation(name, args, len(before))
        return tuple(dims[o] for o in order) if order else None
    if name in _RESHAPING:
        return _reshaped(dims, before, out)
    return _kept(dims, before, out, name, args)


def _regained(sources: list[Source], out: tuple[int, ...]) -> ParamFlow | None:
    sources = [
        s.mapped(tuple(range(len(out)))) if s.shape == out and s.dims.count(None) else s
        for s in sources
    ]
    sources = [s for s in sources if any(d is not None for d in s.dims)]
    return ParamFlow(tuple(sources)) if sources else None


def _permutation(name: str, args: tuple, ndim: int) -> list[int] | None:
    order = list(range(ndim))
    rest = [a for a in args[1:] if isinstance(a, int)]
    if name == "t" and ndim == 2:
        return [1, 0]
    if name == "getattr" and args[1:] in (("T",), ("mT",)):  # weight.T, weight.mT
        return order[::-1] if args[1] == "T" else order[:-2] + order[:-3:-1]
    if name in ("transpose", "swapaxes") and len(rest) == 2:
        a, b = (x % ndim for x in rest)
        order[a], order[b] = order[b], order[a]
        return order
    if name == "permute":
        flat = args[1] if len(args) == 2 and isinstance(args[1], (list, tuple)) else args[1:]
        if all(isinstance(x, int) for x in flat) and len(flat) == ndim:
            return [x % ndim for x in flat]
    return None


def _reshaped(
    dims: tuple[int | None, ...], before: tuple[int, ...], after: tuple[int, ...]
) -> tuple[int | None, ...]:
    """A row-major reshape keeps dimension i as dimension j exactly when both have the same
    size and the same product of sizes before them."""
    where = {(math.prod(before[:i]), size): i for i, size in enumerate(before)}
    return tuple(
        dims[i] if (i := where.get((math.prod(after[:j]), size))) is not None else None
        for j, size in enumerate(after)
    )


def _right_aligned(
    dims: tuple[int | None, ...], shape: tuple[int, ...], out: tuple[int, ...]
) -> tuple[int | None, ...]:
    offset = len(out) - len(shape)
    return tuple(
        dims[j - offset] if 0 <= j - offset < len(shape) and shape[j - offset] == out[j] else None
        for j in range(len(out))
    )


def _kept(
    dims: tuple[int | None, ...], shape: tuple[int, ...], out: tuple[int, ...], name: str, args
) -> tuple[int | None, ...]:
    if name != "getitem":
        return _right_aligned(dims, shape, out)
    moved: list[int | None] = [None] * len(out)
    for i, d in enumerate(dims):
        j = index_keeps_dim(i, len(shape), args[1]) if d is not None else None
        if j is not None and j < len(out) and out[j] == shape[i]:
            moved[j] = d
    return tuple(moved)


def flows_of(values: Any) -> list[ParamFlow]:
    if isinstance(values, ParamFlow):
        return [values]
    if isinstance(values, (list, tuple)):
        return [f for v in values for f in flows_of(v)]
    return []
