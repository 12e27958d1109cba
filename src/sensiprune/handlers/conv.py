"""Convolutions (1d, 2d, 3d; plain, depthwise, grouped) and transposed convolutions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.utils.flop_counter import conv_flop_count

from sensiprune.handlers.base import Cut, Handler, InputFeatures, Layout, fixed, register
from sensiprune.structure.channels import Flow

if TYPE_CHECKING:
    from sensiprune.structure.graph import ChannelTracer

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_TRANSPOSES = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _conv(t: ChannelTracer, node: fx.Node, layer: str, module: nn.Module, flow: Flow) -> Any:
    flow = t.along(flow, 1, module.in_channels)
    if flow is None:
        return t.pinned_output(node, "convolution over a moved channel dimension")
    if module.groups == 1:
        t.consumer(layer, flow.slots)
        return Flow(1, t.producer(layer, module.out_channels))
    if module.groups == module.in_channels == module.out_channels:  # depthwise
        t.channelwise(layer, flow.slots)
        return flow
    # grouped: a group's input channels and output channels go together, whole groups at a
    # time, so every group keeps its width and only `groups` shrinks
    per_in, per_out = module.in_channels // module.groups, module.out_channels // module.groups
    blocks = [flow.slots[k * per_in : (k + 1) * per_in] for k in range(module.groups)]
    t.whole_groups(layer, blocks)
    return Flow(1, [blocks[o // per_out][0] for o in range(module.out_channels)])


def _conv_transpose(
    t: ChannelTracer, node: fx.Node, layer: str, module: nn.Module, flow: Flow
) -> Any:
    flow = t.along(flow, 1, module.in_channels)
    if flow is None or module.groups != 1:
        return t.pinned_output(node, f"grouped transposed convolution (groups={module.groups})")
    t.consumer(layer, flow.slots)
    return Flow(1, t.producer(layer, module.out_channels))


def _conv_group(module: nn.Module) -> list[Cut]:
    width = module.out_channels // module.groups  # output rows of one group
    return [Cut("weight", 0, width=width), Cut("bias", 0, width=width)]


def _conv_group_sizes(module: nn.Module, keep: list[int]) -> None:
    """A grouped conv keeps each group's width: its sizes follow from weight and groups."""
    module.out_channels = module.weight.shape[0]
    module.in_channels = module.weight.shape[1] * module.groups


_CONV_LAYOUTS = {
    "out": Layout(fixed(Cut("weight", 0), Cut("bias", 0)), ("out_channels",)),
    "in": Layout(fixed(Cut("weight", 1)), ("in_channels",)),
    "channel": Layout(
        fixed(Cut("weight", 0), Cut("bias", 0)), ("out_channels", "in_channels", "groups")
    ),
    "group": Layout(_conv_group, ("groups",), _conv_group_sizes),
}
_CONV_TRANSPOSE_LAYOUTS = {  # weight is (in, out / groups, *kernel)
    "out": Layout(fixed(Cut("weight", 1), Cut("bias", 0)), ("out_channels",)),
    "in": Layout(fixed(Cut("weight", 0)), ("in_channels",)),
}


def _input_matrix(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Rows are pixel positions, columns match ``weight.flatten(1)``."""
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


def _sq_sum(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    moved = x.transpose(0, 1).reshape(x.shape[1], -1)
    return moved.pow(2).sum(1), moved.shape[1]


def _taylor(module: nn.Module, output: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    product = (output * grad).double()
    return product.reshape(product.shape[0], product.shape[1], -1).sum(-1)


def _per_weight(module: nn.Module, per_channel: torch.Tensor) -> torch.Tensor:
    """Grouped convs included: each output row reads its group's input channels."""
    weight, groups = module.weight, module.groups
    out_per_group = weight.shape[0] // groups
    by_group = per_channel.reshape(groups, weight.shape[1])
    rows = by_group.repeat_interleave(out_per_group, dim=0)  # (out, in_per_group)
    return rows.reshape(*rows.shape, *([1] * (weight.ndim - 2))).expand_as(weight)


def _flops(module: nn.Module, args: tuple, output: Any) -> int:
    transposed = isinstance(module, _CONV_TRANSPOSES)
    return conv_flop_count(
        list(args[0].shape), list(module.weight.shape), list(output.shape), transposed
    )


def _batched(module: nn.Module, x: torch.Tensor) -> bool:
    return x.dim() == module.weight.dim()


_FEATURES = InputFeatures(
    _sq_sum,
    _per_weight,
    _taylor,
    _input_matrix,
    has_matrix=lambda module: not isinstance(module, nn.Conv3d) and module.groups == 1,
)
register(
    *_CONVS,
    handler=Handler(_conv, _CONV_LAYOUTS, _FEATURES, _flops, _batched),
)
register(
    *_CONV_TRANSPOSES,
    handler=Handler(_conv_transpose, _CONV_TRANSPOSE_LAYOUTS, None, _flops, _batched),
)
