"""Per-head tensors a module is handed, sliced to the heads it kept.

A bias per attention head made outside the blocks from the head count alone (ALiBi's slopes
in BLOOM and MPT) reaches each block as an argument of its forward. Once a block's heads are
cut, the block must read only the kept heads' entries: a forward pre-hook selects them as
the tensor enters. The kept heads' original indices are a buffer of the module, saved with
its weights, so ``sp.load`` puts the hook back (:func:`reinstall`). The buffer's name says
which argument, along which dimension, and how many heads the tensor holds there; heads
folded into the batch (B·H) repeat with that period.

The dependency graph records such an input as a member of role ``in@<buffer name>:0``
(structure/entries.py); its layout here installs the buffer and the hook on the first cut,
and later cuts shrink the buffer as any other tensor.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Iterable

import torch
from torch import nn

from sensiprune.handlers.base import Cut, Layout, fixed

PREFIX = "sensiprune_slice__"
_NAME = re.compile(rf"{PREFIX}(\w+?)__(\d+)__(\d+)")


def buffer_name(argument: str, dim: int, heads: int) -> str:
    return f"{PREFIX}{argument}__{dim}__{heads}"


def is_slice(attr: str) -> bool:
    return _NAME.fullmatch(attr) is not None


def positional_arguments(module: nn.Module) -> tuple[str, ...] | None:
    """The names ``module``'s forward binds its positional arguments to, in order; None
    where they are unknown (a ``*args`` forward). A forward set on the instance (a wrapper
    such as accelerate's hooks, made with ``functools.wraps``) is read through to the one it
    wraps."""
    forward = getattr(module.forward, "__func__", None)
    if forward is None:  # no method to cache by: read the instance's forward each time
        return _positional_names(module.forward, skip=0)
    return _method_positional_names(forward)


@functools.cache
def _method_positional_names(forward: object) -> tuple[str, ...] | None:
    """Read once per forward function: the tracer asks on every module call."""
    return _positional_names(forward, skip=1)  # after self


def _positional_names(forward: object, skip: int) -> tuple[str, ...] | None:
    try:
        params = list(inspect.signature(forward).parameters.values())[skip:]
    except (TypeError, ValueError):
        return None
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return None
    return tuple(p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))


@functools.cache
def layout(attr: str) -> Layout:
    """Index j is the j-th head the argument still holds; cutting it installs the slice."""
    heads = _parse(attr)[2]

    def count(module: nn.Module) -> int:
        kept = module._buffers.get(attr)
        return heads if kept is None else len(kept)

    def install(module: nn.Module, keep: list[int]) -> None:
        if attr not in module._buffers:  # the first cut: the cut had no buffer to shrink
            _install(module, attr, torch.tensor(keep, dtype=torch.long))

    return Layout(fixed(Cut(attr, 0)), (), after=install, count=count)


def sliced(model: nn.Module) -> bool:
    """Whether a module of ``model`` reads fewer heads of an argument than it is handed: no
    config can describe that, as it is the model's own code that makes the tensor."""
    for module in model.modules():
        for attr, kept in module._buffers.items():
            if is_slice(attr) and kept is not None and len(kept) < _parse(attr)[2]:
                return True
    return False


def reinstall(model: nn.Module, keys: Iterable[str]) -> None:
    """Put back the slices that saved state ``keys`` name, all heads kept until the state is
    loaded (a model fresh from its factory has none)."""
    for key in keys:
        owner, _, attr = key.rpartition(".")
        if is_slice(attr):
            module = model.get_submodule(owner)
            if attr not in module._buffers:
                _install(module, attr, torch.arange(_parse(attr)[2]))


def _parse(attr: str) -> tuple[str, int, int]:
    found = _NAME.fullmatch(attr)
    if found is None:
        raise ValueError(f"{attr!r} is not a slice buffer")
    return found[1], int(found[2]), int(found[3])


def _install(module: nn.Module, attr: str, kept: torch.Tensor) -> None:
    device = next((t.device for t in module.parameters()), kept.device)
    module.register_buffer(attr, kept.to(device))
    module.register_forward_pre_hook(_Slice(module, attr), with_kwargs=True)


class _Slice:
    """The pre-hook: the argument, wherever it is passed, with the kept heads only."""

    def __init__(self, module: nn.Module, attr: str) -> None:
        self.attr = attr
        self.argument, self.dim, self.heads = _parse(attr)
        positional = positional_arguments(module) or ()
        self.position = positional.index(self.argument) if self.argument in positional else None

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple | None:
        kept = module._buffers.get(self.attr)
        if kept is None or len(kept) == self.heads:
            return None
        if self.argument in kwargs:
            kwargs = {**kwargs, self.argument: self._select(kwargs[self.argument], kept)}
        elif self.position is not None and self.position < len(args):
            args = (*args[: self.position], self._select(args[self.position], kept),
                    *args[self.position + 1 :])  # fmt: skip
        return args, kwargs

    def _select(self, value: object, kept: torch.Tensor) -> object:
        if not isinstance(value, torch.Tensor):
            return value
        d = self.dim
        heads = value.unflatten(d, (-1, self.heads))
        return heads.index_select(d + 1, kept.to(value.device)).flatten(d, d + 1)
