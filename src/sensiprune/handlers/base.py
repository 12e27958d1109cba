"""The handler type and its registry: everything sensiprune knows about one module type.

A handler holds, for its module type:

- ``flow``: how channels flow through it. The rule gets the tracer, the fx node, the
  module's name, the module and the channel flow of its first input; it records the module's
  members (output channels, input columns, per-channel entries, hidden units) and returns the
  flow of its output. None: the module is not understood, and its output channels are kept.
- ``layouts``: how it is cut, per role ("out": output channels, "in": input columns,
  "channel": per-channel entries, "hidden": recurrent hidden units, "head", "group"). A layout
  says which tensor dimensions hold that role's indices, and in how many blocks (an LSTM
  stacks its four gates, so hidden unit j is row j of each of four blocks). The same layout
  drives scoring (which weights belong to index j) and surgery (what to cut), so they cannot
  disagree.
- ``inputs``: how its input lines up with its weight's columns (what OBS, Wanda and the
  channel Taylor criterion read).
- ``flops``: its FLOPs worked out from shapes, as FlopCounterMode would count them.

A new module type is one handler in one file of this package. A module without one is traced
into, and its own parameters are cut tensor by tensor through the roles of
:func:`param_role`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import fx, nn

if TYPE_CHECKING:
    from sensiprune.structure.channels import Flow
    from sensiprune.structure.graph import ChannelTracer

Rule = Callable[["ChannelTracer", fx.Node, str, nn.Module, "Flow"], Any]


@dataclass(frozen=True)
class Cut:
    """Index j of the role fills positions j·w … j·w + w − 1, plus b·n·w for each block b,
    of ``attr`` along ``dim`` (w = ``width``; an attention head is ``head_dim`` rows wide)."""

    attr: str
    dim: int
    blocks: int = 1
    width: int = 1


def positions(cut: Cut, indices: torch.Tensor, n: int) -> torch.Tensor:
    """Positions along ``cut.dim`` of the given role indices (each repeated per block), in
    order when the indices are."""
    if cut.width == 1 and cut.blocks == 1:
        return indices
    within = (indices.unsqueeze(1) * cut.width + torch.arange(cut.width)).reshape(-1)
    offsets = n * cut.width * torch.arange(cut.blocks)
    return (within.unsqueeze(0) + offsets.unsqueeze(1)).reshape(-1)


@dataclass(frozen=True)
class Layout:
    cuts: Callable[[nn.Module], list[Cut]]
    size_attrs: tuple[str, ...]  # attributes holding the role's size, updated after a cut
    after: Callable[[nn.Module, list[int]], None] | None = None  # fix-ups once cut
    count: Callable[[nn.Module], int] | None = None  # the size, where no int attribute has it

    def size(self, module: nn.Module) -> int:
        if self.count is not None:
            return self.count(module)
        return int(getattr(module, self.size_attrs[0]))


def fixed(*cuts: Cut) -> Callable[[nn.Module], list[Cut]]:
    """The cuts of a layout that are the same for every module of the type."""
    return lambda module: list(cuts)


@dataclass(frozen=True)
class InputFeatures:
    """A layer's input laid out to match its weight's columns."""

    # per input channel: the sum of squares, and how many values were summed
    sq_sum: Callable[[nn.Module, torch.Tensor], tuple[torch.Tensor, int]]
    # a per-input-channel tensor broadcast to the weight's shape
    per_weight: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    # per sample and output channel, Σ over positions of a·∂L/∂a: (samples, channels)
    taylor: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
    # rows are samples (tokens, pixel positions), columns match weight.flatten(1); None where
    # no such matrix exists (a grouped conv)
    matrix: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None
    has_matrix: Callable[[nn.Module], bool] = lambda module: True


def per_channel(size_attr: str) -> Rule:
    """The flow rule of a layer with one entry per channel along dimension 1, its count in
    ``size_attr`` (BatchNorm, InstanceNorm, PReLU): each channel's entries go with it."""

    def rule(t: ChannelTracer, node: fx.Node, layer: str, module: nn.Module, flow: Flow) -> Any:
        along = t.along(flow, 1, getattr(module, size_attr))
        if along is None:
            return t.pinned_output(node, f"{type(module).__name__} over a moved channel dimension")
        t.channelwise(layer, along.slots)
        return along

    return rule


def no_flops(module: nn.Module, args: tuple, output: object) -> int:
    """Layers whose ops have no FLOP formula: FlopCounterMode counts 0 for them."""
    return 0


@dataclass(frozen=True)
class Handler:
    flow: Rule | None = None
    layouts: Mapping[str, Layout] = field(default_factory=dict)
    inputs: InputFeatures | None = None
    flops: Callable[[nn.Module, tuple, Any], int] | None = None
    # whether a call's FLOPs follow from its shapes (say, batched input); always when None
    flops_apply: Callable[[nn.Module, torch.Tensor], bool] | None = None
    # channels pass through unchanged, whatever the input (activations, pooling): no rule
    passes_channels: bool = False


HANDLERS: dict[type | str, Handler] = {}  # a type, or "module.QualName" of optional libraries


def register(*kinds: type | str, handler: Handler) -> Handler:
    """Register ``handler`` for module types (or qualified type names, for layers of optional
    libraries that need not be imported here)."""
    for kind in kinds:
        if kind in HANDLERS:
            raise ValueError(f"{kind} has a handler already")
        HANDLERS[kind] = handler
    return handler


def handler_for(module: nn.Module) -> Handler | None:
    """The handler of ``module``'s type, or of the nearest base type that has one."""
    for kind in type(module).__mro__:
        handler = HANDLERS.get(kind) or HANDLERS.get(f"{kind.__module__}.{kind.__qualname__}")
        if handler is not None:
            return handler
    return None


def rule_for(module: nn.Module) -> Rule | None:
    """How channels flow through ``module`` (None: it is not understood)."""
    handler = handler_for(module)
    return handler.flow if handler is not None else None


def input_features(module: nn.Module, attr: str) -> InputFeatures | None:
    """How the input of the layer that owns weight ``attr`` lines up with it; None where
    sensiprune cannot tell (a parameter other than a layer's weight, a transposed conv)."""
    handler = handler_for(module)
    return handler.inputs if handler is not None and attr == "weight" else None


def input_matrix_of(module: nn.Module, attr: str) -> InputFeatures | None:
    """As :func:`input_features`, where its input matrix (for X Xᵀ) exists too."""
    features = input_features(module, attr)
    if features is None or features.matrix is None or not features.has_matrix(module):
        return None
    return features


def countable_by_shape(module: nn.Module, args: tuple) -> bool:
    """Whether :func:`layer_flops` counts this call of ``module`` from its shapes: a layer of
    an exact known type (a subclass may change forward), on input its formula covers."""
    handler = HANDLERS.get(type(module))
    if handler is None or handler.flops is None:
        return False
    if handler.flops_apply is None:
        return True
    x = args[0] if args else None
    return isinstance(x, torch.Tensor) and handler.flops_apply(module, x)


def layer_flops(module: nn.Module, args: tuple, output: Any) -> int:
    """What FlopCounterMode counts for one countable call of ``module``, worked out from the
    shapes instead of watching every op."""
    return HANDLERS[type(module)].flops(module, args, output)


def param_role(kind: str, attr: str, dim: int) -> str:
    """A role on one tensor of a module that has no layout: dimension ``dim`` of ``attr``.
    The dependency graph finds such roles from the functions a custom module calls on its
    own parameters (``F.conv2d(x, self.weight)``, ``x * self.gamma``), so that module needs
    no handler."""
    return f"{kind}@{attr}:{dim}"
