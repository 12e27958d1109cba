"""Recurrent layers: LSTM, GRU and RNN, cut by hidden unit."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import fx, nn

from sensiprune.handlers.base import Cut, Handler, Layout, register
from sensiprune.structure.channels import Flow, node_args, node_shape

if TYPE_CHECKING:
    from sensiprune.structure.graph import ChannelTracer


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


def _suffixes(module: nn.RNNBase) -> list[str]:
    return ["", "_reverse"] if module.bidirectional else [""]


def _gates(module: nn.RNNBase) -> int:
    return {"LSTM": 4, "GRU": 3}.get(module.mode, 1)


def _hidden(module: nn.RNNBase) -> list[Cut]:
    gates, directions = _gates(module), len(_suffixes(module))
    cuts = []
    for layer in range(module.num_layers):
        for s in _suffixes(module):
            cuts += [
                Cut(f"weight_ih_l{layer}{s}", 0, gates),
                Cut(f"weight_hh_l{layer}{s}", 0, gates),
                Cut(f"weight_hh_l{layer}{s}", 1),
                Cut(f"bias_ih_l{layer}{s}", 0, gates),
                Cut(f"bias_hh_l{layer}{s}", 0, gates),
            ]
            if layer > 0:  # reads the previous layer's hidden units of every direction
                cuts.append(Cut(f"weight_ih_l{layer}{s}", 1, directions))
    return cuts


def _input(module: nn.RNNBase) -> list[Cut]:
    return [Cut(f"weight_ih_l0{s}", 1) for s in _suffixes(module)]


def _refresh(module: nn.RNNBase, keep: list[int]) -> None:
    module._init_flat_weights()  # RNNs keep a flat list of their weights


register(
    nn.LSTM,
    nn.GRU,
    nn.RNN,
    handler=Handler(
        _rnn,
        {
            "hidden": Layout(_hidden, ("hidden_size",), _refresh),
            "in": Layout(_input, ("input_size",), _refresh),
        },
    ),
)
