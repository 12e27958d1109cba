"""Normalisation layers: BatchNorm, GroupNorm, LayerNorm and RMSNorm, and the norm classes
of model libraries that look like them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import fx, nn

from sensiprune.handlers.base import (
    Cut,
    Handler,
    Layout,
    fixed,
    handler_for,
    no_flops,
    per_channel,
    register,
)
from sensiprune.structure.channels import Flow, node_shape

if TYPE_CHECKING:
    from sensiprune.structure.graph import ChannelTracer


def _groupnorm(t: ChannelTracer, node: fx.Node, layer: str, module: nn.Module, flow: Flow) -> Any:
    """Statistics are shared within a group: only whole groups can go without changing the
    others, so a group's channels are one unit and every group keeps its width. With one
    group (PoolFormer's LayerNorm over C, H, W) channels go one by one, as under a
    LayerNorm."""
    flow = t.along(flow, 1, module.num_channels)
    if flow is None or not module.affine:
        return t.pinned_output(node, "GroupNorm without affine weights or over moved channels")
    if module.num_groups == 1:  # a LayerNorm over (C, H, W): channels go one by one
        t.channelwise(layer, flow.slots)
        return flow
    width = module.num_channels // module.num_groups
    t.whole_groups(layer, [flow.slots[k : k + width] for k in range(0, len(flow.slots), width)])
    return flow


def _norm_last(t: ChannelTracer, node: fx.Node, layer: str, module: nn.Module, flow: Flow) -> Any:
    """LayerNorm / RMSNorm over the last dimension. Over the channels, each channel's entry
    goes with it (the statistics of the rest change, as in every library that prunes a
    transformer's width); over another dimension, the channels pass through."""
    shape = node_shape(node)
    normalized = len(getattr(module, "normalized_shape", ()) or ())
    if shape is None or flow.dim < len(shape) - normalized:
        return flow
    if normalized != 1:
        return t.pinned_output(node, f"{type(module).__name__} over several dimensions")
    if getattr(module, "weight", None) is not None or getattr(module, "bias", None) is not None:
        t.channelwise(layer, flow.slots)
    return flow


def _groupnorm_group(module: nn.Module) -> list[Cut]:
    width = module.num_channels // module.num_groups
    return [Cut("weight", 0, width=width), Cut("bias", 0, width=width)]


def _groupnorm_sizes(module: nn.Module, keep: list[int]) -> None:
    module.num_channels = module.weight.shape[0]  # affine: the flow rule pins GroupNorm without


def _norm_width(module: nn.Module) -> int:
    weight = getattr(module, "weight", None)
    return weight.shape[0] if weight is not None else module.normalized_shape[-1]


def _norm_shape(module: nn.Module, keep: list[int]) -> None:
    """A norm over the last dimension: the shape it normalises follows its weight, or the
    channels kept where it has none (after loading, sp.load restores it as recorded)."""
    weight = getattr(module, "weight", None)
    if weight is not None and isinstance(getattr(module, "normalized_shape", None), tuple):
        module.normalized_shape = tuple(weight.shape)
    elif weight is None and keep:
        module.normalized_shape = (len(keep),)


# a norm's entries along the model dimension (hidden-size pruning): LayerNorm, RMSNorm, and
# the norm classes of model libraries: a weight vector, or no parameters and a 1-d shape
NORM_LAYOUT = Layout(fixed(Cut("weight", 0), Cut("bias", 0)), (), _norm_shape, _norm_width)


def is_norm(module: nn.Module) -> bool:
    """A LayerNorm or RMSNorm, or a module that looks like one: no children, and a weight
    vector (perhaps with a bias vector) or no parameters and one normalised dimension."""
    if isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
        return len(module.normalized_shape) == 1
    params = dict(module.named_parameters(recurse=False))
    shape = getattr(module, "normalized_shape", None)
    handler = handler_for(module)
    return (
        not any(True for _ in module.children())
        and (handler is None or not handler.layouts)
        and (
            (
                set(params) in ({"weight"}, {"weight", "bias"})
                and all(p.ndim == 1 for p in params.values())
            )
            or (not params and isinstance(shape, (tuple, list)) and len(shape) == 1)
        )
    )


register(
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    handler=Handler(
        flow=per_channel("num_features"),
        layouts={
            "channel": Layout(
                fixed(*(Cut(a, 0) for a in ("weight", "bias", "running_mean", "running_var"))),
                ("num_features",),
            )
        },
        flops=no_flops,
    ),
)
register(
    nn.GroupNorm,
    handler=Handler(
        flow=_groupnorm,
        layouts={
            "group": Layout(_groupnorm_group, ("num_groups",), _groupnorm_sizes),
            "channel": Layout(fixed(Cut("weight", 0), Cut("bias", 0)), ("num_channels",)),
        },
        flops=no_flops,
    ),
)
register(nn.LayerNorm, handler=Handler(_norm_last, {"channel": NORM_LAYOUT}, flops=no_flops))
register(nn.RMSNorm, handler=Handler(_norm_last, {"channel": NORM_LAYOUT}))
