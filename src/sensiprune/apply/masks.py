"""Unstructured masks that keep pruned weights at exactly zero through training.

A mask is a non-persistent buffer beside its weight (``_sensiprune_mask_<attr>``), so it moves
with ``.to(device)``, survives ``copy.deepcopy`` and stays out of the state_dict: the model keeps
its own parameters, state_dict keys and optimiser references. It holds one bit per weight,
packed eight to a byte: a byte per weight would add half of a bfloat16 model's size again.
Two mechanisms keep zeros zero: a global optimiser step hook re-applies masks after every
step of any torch optimiser (momentum, Adam moments and weight decay cannot revive a weight),
and a forward pre-hook re-applies a mask whenever the weight changed in place since it was
last masked.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.utils.weak import WeakTensorKeyDictionary

from sensiprune.targets import Target

_PREFIX = "_sensiprune_mask_"
_SEEN_VERSION = "_sensiprune_version"
# parameter -> (its module, attribute name), for the optimiser hook, which only sees parameters
_OWNERS: WeakTensorKeyDictionary = WeakTensorKeyDictionary()


_BITS = (1, 2, 4, 8, 16, 32, 64, 128)


def _masked_attrs(module: nn.Module) -> list[str]:
    return [name[len(_PREFIX) :] for name in module._buffers if name.startswith(_PREFIX)]


def pack(keep: torch.Tensor) -> torch.Tensor:
    """A boolean mask as bits, eight to a byte (flattened; the weight keeps the shape)."""
    flat = keep.reshape(-1).to(torch.uint8)
    flat = torch.cat([flat, flat.new_zeros(-flat.numel() % 8)]).view(-1, 8)
    return (flat * flat.new_tensor(_BITS)).sum(1, dtype=torch.uint8)


def unpack(packed: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """The boolean mask of ``shape`` that :func:`pack` packed."""
    bits = packed.unsqueeze(1).bitwise_and(packed.new_tensor(_BITS)).ne(0)
    return bits.reshape(-1)[: math.prod(shape)].reshape(shape)


def mask_of(module: nn.Module, attr: str) -> torch.Tensor | None:
    """The keep-mask of ``module.attr``, unpacked, or None."""
    packed = module._buffers.get(_PREFIX + attr)
    return None if packed is None else unpack(packed, getattr(module, attr).shape)


def set_mask(module: nn.Module, attr: str, keep: torch.Tensor) -> None:
    module.register_buffer(_PREFIX + attr, pack(keep), persistent=False)


def _reapply(module: nn.Module, attr: str, always: bool = False) -> None:
    param = getattr(module, attr)
    _OWNERS[param] = (weakref.ref(module), attr)
    if not always and getattr(param, _SEEN_VERSION, None) == param._version:
        return
    with torch.no_grad():
        param.mul_(mask_of(module, attr))
    setattr(param, _SEEN_VERSION, param._version)


def _after_optimizer_step(optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
    for group in optimizer.param_groups:
        for param in group["params"]:
            owner = _OWNERS.get(param)
            module = owner[0]() if owner is not None else None
            if module is not None and _PREFIX + owner[1] in module._buffers:
                # always: fused optimisers (torch's fused AdamW, Trainer's default) update
                # weights without bumping their version counter
                _reapply(module, owner[1], always=True)


@torch.compiler.disable  # bookkeeping on tensor versions; under torch.compile it runs eagerly
def _before_forward(module: nn.Module, args: tuple) -> None:
    for attr in _masked_attrs(module):
        _reapply(module, attr)


register_optimizer_step_post_hook(_after_optimizer_step)


def apply_masks(targets: dict[str, Target], masks: dict[str, torch.Tensor]) -> None:
    """Zero the pruned weights and keep them zero from now on (masks only ever shrink)."""
    for name, keep in masks.items():
        module, attr = targets[name].module, targets[name].attr
        param = getattr(module, attr)
        keep = keep.to(device=param.device, dtype=torch.bool)
        previous = mask_of(module, attr)
        if previous is not None:
            keep = keep & previous
        set_mask(module, attr, keep)
        param.__dict__.pop(_SEEN_VERSION, None)
        _reapply(module, attr)
        if _before_forward not in module._forward_pre_hooks.values():
            module.register_forward_pre_hook(_before_forward)


class _Masks(Mapping[str, torch.Tensor]):
    """Masks by parameter name, each unpacked when read: a billion-weight model's masks
    unpacked at once would hold a byte per weight."""

    def __init__(self, owners: dict[str, tuple[nn.Module, str]]) -> None:
        self._owners = owners

    def __getitem__(self, name: str) -> torch.Tensor:
        module, attr = self._owners[name]
        mask = mask_of(module, attr)
        assert mask is not None
        return mask

    def __iter__(self) -> Iterator[str]:
        return iter(self._owners)

    def __len__(self) -> int:
        return len(self._owners)


def lazy_masks(model: nn.Module) -> Mapping[str, torch.Tensor]:
    """The keep-masks attached to the model, by parameter name, each unpacked to booleans
    when read: what the library reads, one layer at a time."""
    owners = {}
    for layer, module in model.named_modules():
        for attr in _masked_attrs(module):
            owners[f"{layer}.{attr}" if layer else attr] = (module, attr)
    return _Masks(owners)


def get_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """The keep-masks currently attached to the model, by parameter name (booleans)."""
    return dict(lazy_masks(model).items())


def masks_of(targets: dict[str, Target]) -> dict[str, torch.Tensor]:
    """The keep-masks attached to ``targets``, by their names there (a block's names)."""
    found = {}
    for name, target in targets.items():
        mask = mask_of(target.module, target.attr)
        if mask is not None:
            found[name] = mask
    return found


def make_permanent(model: nn.Module) -> None:
    """Drop masks and hooks; pruned weights stay zero but may be trained again."""
    for module in model.modules():
        for attr in _masked_attrs(module):
            getattr(module, attr).__dict__.pop(_SEEN_VERSION, None)
            _reapply(module, attr)
            del module._buffers[_PREFIX + attr]
        for key, hook in list(module._forward_pre_hooks.items()):
            if hook is _before_forward:
                del module._forward_pre_hooks[key]


@dataclass(frozen=True)
class LayerSparsity:
    """How much of one weight tensor is pruned."""

    name: str
    numel: int
    kept: int

    @property
    def sparsity(self) -> float:
        return 1.0 - self.kept / self.numel if self.numel else 0.0


def layer_sparsity(model: nn.Module, targets: dict[str, Target]) -> tuple[LayerSparsity, ...]:
    def kept(t: Target) -> int:
        mask = mask_of(t.module, t.attr)
        return t.param.numel() if mask is None else int(mask.sum())

    return tuple(LayerSparsity(name, t.param.numel(), kept(t)) for name, t in targets.items())
