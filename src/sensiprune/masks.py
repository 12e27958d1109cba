"""Unstructured masks that keep pruned weights at exactly zero through training.

The mask rides on the parameter itself (``param._sensiprune_mask``), so the model keeps its
own parameters, state_dict keys and optimiser references. Two mechanisms keep zeros zero:
a global optimiser step hook re-applies masks after every step of any torch optimiser
(momentum, Adam moments and weight decay cannot revive a weight), and a forward pre-hook
re-applies a mask whenever the parameter changed in place since it was last masked.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from .targets import Target

_MASK = "_sensiprune_mask"
_SEEN_VERSION = "_sensiprune_version"
_HOOK = "_sensiprune_mask_hook"


def _reapply(param: torch.Tensor) -> None:
    mask = getattr(param, _MASK, None)
    if mask is None or getattr(param, _SEEN_VERSION, None) == param._version:
        return
    with torch.no_grad():
        if mask.device != param.device:
            mask = mask.to(param.device)
            setattr(param, _MASK, mask)
        param.mul_(mask)
    setattr(param, _SEEN_VERSION, param._version)


def _after_optimizer_step(optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
    for group in optimizer.param_groups:
        for param in group["params"]:
            _reapply(param)


def _before_forward(module: nn.Module, args: tuple) -> None:
    for param in module.parameters(recurse=False):
        _reapply(param)


register_optimizer_step_post_hook(_after_optimizer_step)


def apply_masks(targets: dict[str, Target], masks: dict[str, torch.Tensor]) -> None:
    """Zero the pruned weights and keep them zero from now on (masks only ever shrink)."""
    for name, keep in masks.items():
        target = targets[name]
        param = target.param
        previous = getattr(param, _MASK, None)
        keep = keep.to(device=param.device, dtype=torch.bool)
        if previous is not None:
            keep = keep & previous
        setattr(param, _MASK, keep)
        setattr(param, _SEEN_VERSION, None)
        _reapply(param)
        if getattr(target.module, _HOOK, None) is None:
            setattr(target.module, _HOOK, target.module.register_forward_pre_hook(_before_forward))


def get_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """The keep-masks currently attached to the model's parameters, by parameter name."""
    return {name: getattr(p, _MASK) for name, p in model.named_parameters() if hasattr(p, _MASK)}


def make_permanent(model: nn.Module) -> None:
    """Drop masks and hooks; pruned weights stay zero but may be trained again."""
    for param in model.parameters():
        if hasattr(param, _MASK):
            _reapply(param)
            param.__dict__.pop(_MASK)
            param.__dict__.pop(_SEEN_VERSION, None)
    for module in model.modules():
        handle = getattr(module, _HOOK, None)
        if handle is not None:
            handle.remove()
            delattr(module, _HOOK)


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
