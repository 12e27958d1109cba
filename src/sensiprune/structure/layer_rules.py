"""How each module type moves channel slots: one rule per type, registered in MODULE_RULES.

A rule gets the tracer, the fx node, the module's name, the module and the channel flow of its
first input; it records the module's members (output channels, input columns, per-channel
entries, hidden units) and returns the flow of its output. A new layer type is one new rule.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from torch import fx, nn

from sensiprune.apply.attention import prunable_heads
from sensiprune.structure.channels import Flow, node_args, node_shape

if TYPE_CHECKING:
    from sensiprune.structure.graph import ChannelTracer

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_TRANSPOSES = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _flatten_module(
    t: ChannelTracer, node: fx.Node, layer: str, module: nn.Module, flow: Flow
) -> Any:
    return t.flatten(node, module.start_dim, module.end_dim)


def _rnn(t: ChannelTracer, node: fx.Node, layer: str, module: nn.Module, flow: Flow) -> Any:
    """Hidden units of every layer and direction are removed together (one hidden_size)."""
    shape = node_shape(node.args[0])
    flow = t.along(flow, len(shape) - 1, shape[-1]) if shape is not None else None
    if getattr(module, "proj_size", 0) or flow is None:
        return t.pinned_output(node, f"{type(module).__name__} with projections or moved features")
    t.consumer(layer, flow.slots)
    initial_state = node_args(node)[1:]
    hidden = t.producer(layer, module.hidden_size, pinned=bool(initial_state), role="hidden")
    for arg in initial_state:
        t.pin(t.flows.get(arg))
    directions = 2 if module.bidirectional else 1
    state = Flow(2, hidden)
    return [Flow(flow.dim, hidden * directions), [state, state] if module.mode == "LSTM" else state]


def _transformer_layers(
    t: ChannelTracer, node: fx.Node, layer: str, module: nn.Module, flow: Flow
) -> Any:
    """Encoder/decoder layers: the feed-forward neurons (linear1 rows, linear2 columns) of
    each layer form free groups; the model dimension runs through LayerNorm and residuals and
    stays pinned, and attention heads are left to a dedicated handler."""
    if hasattr(module, "layers"):
        blocks = [(f"{layer}.layers.{i}", block) for i, block in enumerate(module.layers)]
    else:
        blocks = [(layer, module)]
    for name, block in blocks:
        hidden = t.producer(f"{name}.linear1", block.linear1.out_features)
        t.consumer(f"{name}.linear2", hidden)
        for attr in ("self_attn", "multihead_attn"):
            if prunable_heads(getattr(block, attr, None)):
                _heads(t, f"{name}.{attr}", getattr(block, attr))
    return t.pinned_output(node, "the model dimension of a transformer (LayerNorm, residuals)")


def _embedding(t: ChannelTracer, node: fx.Node, layer: str, module: nn.Module, flow: Any) -> Any:
    """Token ids carry no channels; the embedding dimensions are channels it produces."""
    shape = node_shape(node)
    if shape is None:
        return t.pinned_output(node, "an embedding with unknown output")
    return Flow(len(shape) - 1, t.producer(layer, module.embedding_dim))


def _heads(t: ChannelTracer, layer: str, attention: nn.MultiheadAttention) -> None:
    """A head: its q, k and v rows, and the out_proj columns that read its output."""
    heads = t.producer(layer, attention.num_heads, role="head")
    width = attention.head_dim
    t.consumer(f"{layer}.out_proj", [heads[u // width] for u in range(len(heads) * width)])


def _attention(t: ChannelTracer, node: fx.Node, layer: str, module: nn.Module, flow: Flow) -> Any:
    if prunable_heads(module):
        _heads(t, layer, module)
    pinned = t.pinned_output(node, "the model dimension around attention")
    return [pinned, None]


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


def _batchnorm(t: ChannelTracer, node: fx.Node, layer: str, module: nn.Module, flow: Flow) -> Any:
    flow = t.along(flow, 1, module.num_features)
    if flow is None:
        return t.pinned_output(node, "BatchNorm over a moved channel dimension")
    t.channelwise(layer, flow.slots)
    return flow


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


def _softmax(t: ChannelTracer, node: fx.Node, layer: str, module: nn.Module, flow: Flow) -> Any:
    shape = node_shape(node)
    if shape is not None and module.dim is not None and module.dim % len(shape) != flow.dim:
        return flow
    return t.pinned_output(node, "softmax over the channels")


MODULE_RULES: dict[type, Callable[..., Any]] = {
    **{c: _conv for c in _CONVS},
    **{c: _conv_transpose for c in _CONV_TRANSPOSES},
    nn.Linear: _linear,
    **{c: _batchnorm for c in _BATCHNORMS},
    nn.GroupNorm: _groupnorm,
    nn.Flatten: _flatten_module,
    **{c: _rnn for c in (nn.LSTM, nn.GRU, nn.RNN)},
    nn.MultiheadAttention: _attention,
    nn.Embedding: _embedding,
    nn.LayerNorm: _norm_last,
    nn.Softmax: _softmax,
    nn.RMSNorm: _norm_last,
    **{
        c: _transformer_layers
        for c in (
            nn.TransformerEncoderLayer,
            nn.TransformerDecoderLayer,
            nn.TransformerEncoder,
            nn.TransformerDecoder,
        )
    },
}


def rule_for(module: nn.Module) -> Callable[..., Any] | None:
    """The rule of ``module``'s type, or of the nearest base type that has one."""
    rule = MODULE_RULES.get(type(module))
    if rule is None:
        rule = next((r for base, r in MODULE_RULES.items() if isinstance(module, base)), None)
    return rule
