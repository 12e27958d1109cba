"""Unstructured masks that keep pruned weights at exactly zero through training.

A mask is a non-persistent buffer beside its weight (``_sensiprune_mask_<attr>``), so it moves
with ``.to(device)``, survives ``copy.deepcopy`` and stays out of the state_dict: the model keeps
its own parameters, state_dict keys and optimiser references. Two mechanisms keep zeros zero:
a global optimiser step hook re-applies masks after every step of any torch optimiser
(momentum, Adam moments and weight decay cannot revive a weight), and a forward pre-hook
re-applies a mask whenever the weight changed in place since it was last masked.
"""

from __future__ import annotations

import weakref
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


def _masked_attrs(module: nn.Module) -> list[str]:
    return [name[len(_PREFIX) :] for name in module._buffers if name.startswith(_PREFIX)]


def _reapply(module: nn.Module, attr: str, always: bool = False) -> None:
    param = getattr(module, attr)
    _OWNERS[param] = (weakref.ref(module), attr)
    if not always and getattr(param, _SEEN_VERSION, None) == param._version:
        return
    with torch.no_grad():
        param.mul_(getattr(module, _PREFIX + attr))
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
        previous = module._buffers.get(_PREFIX + attr)
        if previous is not None:
            keep = keep & previous
        module.register_buffer(_PREFIX + attr, keep, persistent=False)
        param.__dict__.pop(_SEEN_VERSION, None)
        _reapply(module, attr)
        if _before_forward not in module._forward_pre_hooks.values():
            module.register_forward_pre_hook(_before_forward)


def get_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """The keep-masks currently attached to the model, by parameter name."""
    found = {}
    for layer, module in model.named_modules():
        for attr in _masked_attrs(module):
            found[f"{layer}.{attr}" if layer else attr] = module._buffers[_PREFIX + attr]
    return found


def masks_of(targets: dict[str, Target]) -> dict[str, torch.Tensor]:
    """The keep-masks attached to ``targets``, by their names there (a block's names)."""
    found = {}
    for name, target in targets.items():
        mask = target.module._buffers.get(_PREFIX + target.attr)
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
    masks = get_masks(model)
    return tuple(
        LayerSparsity(
            name,
            t.param.numel(),
            int(masks[name].sum()) if name in masks else t.param.numel(),
        )
        for name, t in targets.items()
    )
