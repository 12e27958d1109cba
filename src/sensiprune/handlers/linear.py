"""Linear, and GPT-2's Conv1D (a Linear with its weight transposed)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import fx, nn

from sensiprune.handlers.base import Cut, Handler, InputFeatures, Layout, fixed, register
from sensiprune.structure.channels import Flow, node_shape

if TYPE_CHECKING:
    from sensiprune.structure.graph import ChannelTracer


def _linear(t: ChannelTracer, node: fx.Node, layer: str, module: nn.Module, flow: Flow) -> Any:
    """A Linear over the channels reads them and makes its own; one over another dimension
    (an MLP-Mixer's token mixing) treats every channel alike, so the channels pass through
    and the layer stays as it is."""
    shape = node_shape(node.args[0])
    if shape is None:
        return t.pinned_output(node, "Linear on a tensor of unknown shape")
    last = t.along(flow, len(shape) - 1, shape[-1])
    if last is None:
        return flow
    t.consumer(layer, last.slots)
    return Flow(last.dim, t.producer(layer, module.out_features))


def _rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1])


def _sq_sum(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    flat = _rows(module, x)
    return flat.pow(2).sum(0), flat.shape[0]


def _taylor(module: nn.Module, output: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    product = (output * grad).double()
    if product.ndim <= 2:
        return product.reshape(-1, product.shape[-1])
    return product.sum(tuple(range(1, product.ndim - 1)))


def _per_weight(module: nn.Module, per_channel: torch.Tensor) -> torch.Tensor:
    return per_channel.reshape(1, -1).expand_as(module.weight)


def _flops(module: nn.Module, args: tuple, output: Any) -> int:
    return 2 * args[0].numel() * module.out_features


register(
    nn.Linear,
    handler=Handler(
        flow=_linear,
        layouts={
            "out": Layout(fixed(Cut("weight", 0), Cut("bias", 0)), ("out_features",)),
            "in": Layout(fixed(Cut("weight", 1)), ("in_features",)),
        },
        inputs=InputFeatures(_sq_sum, _per_weight, _taylor, _rows),
        flops=_flops,
        flops_apply=lambda module, x: x.dim() >= 2,
    ),
)
register(
    "transformers.pytorch_utils.Conv1D",  # traced into: only its layouts are needed
    handler=Handler(
        layouts={
            "out": Layout(fixed(Cut("weight", 1), Cut("bias", 0)), ("nf",)),
            "in": Layout(fixed(Cut("weight", 0)), ("nx",)),
        }
    ),
)
