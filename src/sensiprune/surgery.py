"""Physical removal: build smaller parameters with the kept indices, module type by module type.

Each module type has a ``Layout`` per role it can play ("out": output channels, "in": input
columns, "channel": per-channel entries, "hidden": recurrent hidden units). A layout says which
tensor dimensions hold that role's indices, and in how many blocks (an LSTM stacks its four
gates, so hidden unit j is row j of each of four blocks). The same layout drives scoring (which
weights belong to index j) and surgery (what to cut), so they cannot disagree. Adding a module
type is one new entry in ``LAYOUTS``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

_MASK_PREFIX = "_sensiprune_mask_"  # unstructured masks (masks.py) are sliced along


@dataclass(frozen=True)
class Cut:
    """Index j of the role sits at positions j + b·n (b < blocks) of ``attr`` along ``dim``."""

    attr: str
    dim: int
    blocks: int = 1


@dataclass(frozen=True)
class Layout:
    cuts: Callable[[nn.Module], list[Cut]]
    size_attrs: tuple[str, ...]  # attributes holding the role's size, updated after a cut

    def size(self, module: nn.Module) -> int:
        return int(getattr(module, self.size_attrs[0]))


def _fixed(*cuts: Cut) -> Callable[[nn.Module], list[Cut]]:
    return lambda module: list(cuts)


def _rnn_suffixes(module: nn.RNNBase) -> list[str]:
    return ["", "_reverse"] if module.bidirectional else [""]


def _rnn_gates(module: nn.RNNBase) -> int:
    return {"LSTM": 4, "GRU": 3}.get(module.mode, 1)


def _rnn_hidden(module: nn.RNNBase) -> list[Cut]:
    gates, directions = _rnn_gates(module), len(_rnn_suffixes(module))
    cuts = []
    for layer in range(module.num_layers):
        for s in _rnn_suffixes(module):
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


def _rnn_input(module: nn.RNNBase) -> list[Cut]:
    return [Cut(f"weight_ih_l0{s}", 1) for s in _rnn_suffixes(module)]


_CONV = {
    "out": Layout(_fixed(Cut("weight", 0), Cut("bias", 0)), ("out_channels",)),
    "in": Layout(_fixed(Cut("weight", 1)), ("in_channels",)),
    "channel": Layout(
        _fixed(Cut("weight", 0), Cut("bias", 0)), ("out_channels", "in_channels", "groups")
    ),
}
_CONV_TRANSPOSE = {  # weight is (in, out / groups, *kernel)
    "out": Layout(_fixed(Cut("weight", 1), Cut("bias", 0)), ("out_channels",)),
    "in": Layout(_fixed(Cut("weight", 0)), ("in_channels",)),
}
_BATCHNORM = {
    "channel": Layout(
        _fixed(*(Cut(a, 0) for a in ("weight", "bias", "running_mean", "running_var"))),
        ("num_features",),
    )
}
_RNN = {
    "hidden": Layout(_rnn_hidden, ("hidden_size",)),
    "in": Layout(_rnn_input, ("input_size",)),
}
LAYOUTS: dict[type, dict[str, Layout]] = {
    nn.Linear: {
        "out": Layout(_fixed(Cut("weight", 0), Cut("bias", 0)), ("out_features",)),
        "in": Layout(_fixed(Cut("weight", 1)), ("in_features",)),
    },
    **{c: _CONV for c in (nn.Conv1d, nn.Conv2d, nn.Conv3d)},
    **{c: _CONV_TRANSPOSE for c in (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)},
    **{c: _BATCHNORM for c in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)},
    **{c: _RNN for c in (nn.LSTM, nn.GRU, nn.RNN)},
}


def layout_for(module: nn.Module, role: str) -> Layout:
    for kind in type(module).__mro__:
        if kind in LAYOUTS and role in LAYOUTS[kind]:
            return LAYOUTS[kind][role]
    raise TypeError(f"no surgery for the {role} indices of {type(module).__name__}")


def positions(cut: Cut, indices: torch.Tensor, n: int) -> torch.Tensor:
    """Positions along ``cut.dim`` of the given role indices (each repeated per block)."""
    return (indices.unsqueeze(0) + n * torch.arange(cut.blocks).unsqueeze(1)).reshape(-1)


def shrink(module: nn.Module, role: str, keep: torch.Tensor) -> None:
    """Keep only the ``keep`` indices of ``module`` in ``role``; dtype, device, grad kept."""
    layout = layout_for(module, role)
    n = layout.size(module)
    keep = torch.as_tensor(keep, dtype=torch.long)
    for cut in layout.cuts(module):
        tensor = getattr(module, cut.attr, None)
        if tensor is None:
            continue
        index = positions(cut, keep, n).sort().values.to(tensor.device)
        _replace(module, cut.attr, tensor.detach().index_select(cut.dim, index).clone())
        mask = module._buffers.get(_MASK_PREFIX + cut.attr)
        if mask is not None:
            module._buffers[_MASK_PREFIX + cut.attr] = mask.index_select(cut.dim, index).clone()
    for attr in layout.size_attrs:
        setattr(module, attr, len(keep))
    if isinstance(module, nn.RNNBase):
        module._init_flat_weights()


def _replace(module: nn.Module, attr: str, value: torch.Tensor) -> None:
    old = getattr(module, attr)
    if isinstance(old, nn.Parameter):
        setattr(module, attr, nn.Parameter(value, requires_grad=old.requires_grad))
    else:
        module._buffers[attr] = value
