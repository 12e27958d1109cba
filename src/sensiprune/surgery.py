"""Physical removal: build smaller parameters with the kept indices, module type by module type.

One handler per module type, registered in ``HANDLERS``; each knows which dimension of which
tensor holds its output channels, input columns or per-channel entries, and which attributes
(``out_channels``, ``in_features``, ``num_features`` ...) must follow so the model's own code runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

_MASK_PREFIX = "_sensiprune_mask_"  # unstructured masks (masks.py) are sliced along


def _slice(module: nn.Module, attr: str, dim: int, keep: torch.Tensor) -> None:
    """Replace ``module.attr`` by its slice along ``dim``; dtype, device, requires_grad kept."""
    tensor = getattr(module, attr, None)
    if tensor is None:
        return
    index = keep.to(tensor.device)
    smaller = tensor.detach().index_select(dim, index).clone()
    if isinstance(tensor, nn.Parameter):
        setattr(module, attr, nn.Parameter(smaller, requires_grad=tensor.requires_grad))
    else:
        module._buffers[attr] = smaller
    mask = module._buffers.get(_MASK_PREFIX + attr)
    if mask is not None:
        module._buffers[_MASK_PREFIX + attr] = mask.index_select(dim, index).clone()


@dataclass(frozen=True)
class Handler:
    """How to shrink one module type; a missing role means the type never plays it."""

    out: Callable[[nn.Module, torch.Tensor], None] | None = None
    inputs: Callable[[nn.Module, torch.Tensor], None] | None = None
    channel: Callable[[nn.Module, torch.Tensor], None] | None = None


def _linear_out(m: nn.Linear, keep: torch.Tensor) -> None:
    _slice(m, "weight", 0, keep)
    _slice(m, "bias", 0, keep)
    m.out_features = len(keep)


def _linear_in(m: nn.Linear, keep: torch.Tensor) -> None:
    _slice(m, "weight", 1, keep)
    m.in_features = len(keep)


def _conv_out(m: nn.modules.conv._ConvNd, keep: torch.Tensor) -> None:
    _slice(m, "weight", 0, keep)
    _slice(m, "bias", 0, keep)
    m.out_channels = len(keep)


def _conv_in(m: nn.modules.conv._ConvNd, keep: torch.Tensor) -> None:
    _slice(m, "weight", 1, keep)
    m.in_channels = len(keep)


def _depthwise(m: nn.modules.conv._ConvNd, keep: torch.Tensor) -> None:
    _slice(m, "weight", 0, keep)
    _slice(m, "bias", 0, keep)
    m.in_channels = m.out_channels = m.groups = len(keep)


def _transpose_out(m: nn.modules.conv._ConvTransposeNd, keep: torch.Tensor) -> None:
    _slice(m, "weight", 1, keep)  # weight is (in, out / groups, *kernel)
    _slice(m, "bias", 0, keep)
    m.out_channels = len(keep)


def _transpose_in(m: nn.modules.conv._ConvTransposeNd, keep: torch.Tensor) -> None:
    _slice(m, "weight", 0, keep)
    m.in_channels = len(keep)


def _batchnorm(m: nn.modules.batchnorm._BatchNorm, keep: torch.Tensor) -> None:
    for attr in ("weight", "bias", "running_mean", "running_var"):
        _slice(m, attr, 0, keep)
    m.num_features = len(keep)


HANDLERS: dict[type, Handler] = {
    nn.Linear: Handler(out=_linear_out, inputs=_linear_in),
    **{
        c: Handler(out=_conv_out, inputs=_conv_in, channel=_depthwise)
        for c in (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    },
    **{
        c: Handler(out=_transpose_out, inputs=_transpose_in)
        for c in (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
    },
    **{c: Handler(channel=_batchnorm) for c in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)},
}


def handler_for(module: nn.Module) -> Handler | None:
    for kind in type(module).__mro__:
        if kind in HANDLERS:
            return HANDLERS[kind]
    return None


def shrink(module: nn.Module, role: str, keep: torch.Tensor) -> None:
    """Keep only the ``keep`` indices of ``module`` in ``role`` ("out", "in" or "channel")."""
    handler = handler_for(module)
    action = (
        None
        if handler is None
        else {"out": handler.out, "in": handler.inputs, "channel": handler.channel}[role]
    )
    if action is None:
        raise TypeError(f"no surgery for the {role} indices of {type(module).__name__}")
    action(module, torch.as_tensor(keep, dtype=torch.long))
