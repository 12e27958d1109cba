"""What a weight multiplies: a layer's input laid out to match its weight's columns."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def has_input_features(module: nn.Module, attr: str) -> bool:
    """Input channel statistics exist for the weight of Linear and (non-transposed) convs."""
    return attr == "weight" and isinstance(module, (nn.Linear, *_CONVS))


def has_input_matrix(module: nn.Module, attr: str) -> bool:
    """A column-aligned input matrix (for X Xᵀ) exists for Linear and ungrouped 1d/2d convs."""
    if attr != "weight":
        return False
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, (nn.Conv1d, nn.Conv2d)) and module.groups == 1


def input_matrix(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Rows are samples (tokens, pixel positions), columns match ``weight.flatten(1)``."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    if isinstance(module, nn.Conv1d):
        x = x.unsqueeze(-2)  # a 1d conv is a 2d conv over a height of one
        kernel, stride = (1, *module.kernel_size), (1, *module.stride)
        dilation = (1, *module.dilation)
        padding = (0, *module.padding) if not isinstance(module.padding, str) else module.padding
    else:
        kernel, stride = module.kernel_size, module.stride
        dilation, padding = module.dilation, module.padding
    if isinstance(padding, str) or module.padding_mode != "zeros":
        x = _pad_like(module, x)
        padding = 0
    cols = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def channel_sq_sum(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Sum of squares per input feature (channel), and how many values were summed."""
    if isinstance(module, nn.Linear):
        flat = x.reshape(-1, x.shape[-1])
        return flat.pow(2).sum(0), flat.shape[0]
    moved = x.transpose(0, 1).reshape(x.shape[1], -1)
    return moved.pow(2).sum(1), moved.shape[1]


def channel_taylor(module: nn.Module, output: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Per sample and output channel, Σ over positions of a·∂L/∂a: shape (samples, channels)."""
    product = (output * grad).double()
    if isinstance(module, nn.Linear):
        return (
            product.reshape(-1, product.shape[-1])
            if product.ndim <= 2
            else product.sum(tuple(range(1, product.ndim - 1)))
        )
    return product.reshape(product.shape[0], product.shape[1], -1).sum(-1)


def per_weight_input(module: nn.Module, per_channel: torch.Tensor) -> torch.Tensor:
    """Broadcast a per-input-channel tensor to the weight's shape (grouped convs included)."""
    weight = module.weight
    if isinstance(module, nn.Linear):
        return per_channel.reshape(1, -1).expand_as(weight)
    groups = module.groups
    in_per_group = weight.shape[1]
    out_per_group = weight.shape[0] // groups
    by_group = per_channel.reshape(groups, in_per_group)
    rows = by_group.repeat_interleave(out_per_group, dim=0)  # (out, in_per_group)
    return rows.reshape(*rows.shape, *([1] * (weight.ndim - 2))).expand_as(weight)


def _pad_like(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a conv's own padding (string or non-zero mode) explicitly before unfolding."""
    if isinstance(module.padding, str):
        if module.padding == "valid":
            return x
        pads: list[int] = []
        kernel = module.kernel_size
        dilation = module.dilation
        if isinstance(module, nn.Conv1d):
            kernel, dilation = (1, *kernel), (1, *dilation)
        for k, d in reversed(list(zip(kernel, dilation))):
            total = d * (k - 1)
            pads += [total // 2, total - total // 2]
        return F.pad(x, pads)
    padding = module.padding
    if isinstance(module, nn.Conv1d):
        padding = (0, *padding)
    pads = [p for p in reversed(padding) for _ in range(2)]
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    return F.pad(x, pads, mode=mode)
