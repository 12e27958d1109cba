"""Physical removal: build smaller parameters with the kept indices, module type by module type.

Each module type has a ``Layout`` per role it can play ("out": output channels, "in": input
columns, "channel": per-channel entries, "hidden": recurrent hidden units). A layout says which
tensor dimensions hold that role's indices, and in how many blocks (an LSTM stacks its four
gates, so hidden unit j is row j of each of four blocks). The same layout drives scoring (which
weights belong to index j) and surgery (what to cut), so they cannot disagree. Adding a module
type is one new entry in ``LAYOUTS``; a module without one is cut tensor by tensor, through
the roles of :func:`param_role`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from sensiprune.apply.attention import become_head_pruned

_MASK_PREFIX = "_sensiprune_mask_"  # unstructured masks (masks.py) are sliced along


@dataclass(frozen=True)
class Cut:
    """Index j of the role fills positions j·w … j·w + w − 1, plus b·n·w for each block b,
    of ``attr`` along ``dim`` (w = ``width``; an attention head is ``head_dim`` rows wide)."""

    attr: str
    dim: int
    blocks: int = 1
    width: int = 1


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


def _conv_group(module: nn.Module) -> list[Cut]:
    width = module.out_channels // module.groups  # output rows of one group
    return [Cut("weight", 0, width=width), Cut("bias", 0, width=width)]


def _conv_group_sizes(module: nn.Module, keep: list[int]) -> None:
    """A grouped conv keeps each group's width: its sizes follow from weight and groups."""
    module.out_channels = module.weight.shape[0]
    module.in_channels = module.weight.shape[1] * module.groups


_CONV = {
    "out": Layout(_fixed(Cut("weight", 0), Cut("bias", 0)), ("out_channels",)),
    "in": Layout(_fixed(Cut("weight", 1)), ("in_channels",)),
    "channel": Layout(
        _fixed(Cut("weight", 0), Cut("bias", 0)), ("out_channels", "in_channels", "groups")
    ),
    "group": Layout(_conv_group, ("groups",), _conv_group_sizes),
}


def _groupnorm_group(module: nn.Module) -> list[Cut]:
    width = module.num_channels // module.num_groups
    return [Cut("weight", 0, width=width), Cut("bias", 0, width=width)]


def _groupnorm_sizes(module: nn.Module, keep: list[int]) -> None:
    module.num_channels = module.weight.shape[0]  # affine: layer_rules pins GroupNorm without


_GROUPNORM = {
    "group": Layout(_groupnorm_group, ("num_groups",), _groupnorm_sizes),
    "channel": Layout(_fixed(Cut("weight", 0), Cut("bias", 0)), ("num_channels",)),
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


def _rnn_refresh(module: nn.RNNBase, keep: list[int]) -> None:
    module._init_flat_weights()  # RNNs keep a flat list of their weights


_RNN = {
    "hidden": Layout(_rnn_hidden, ("hidden_size",), _rnn_refresh),
    "in": Layout(_rnn_input, ("input_size",), _rnn_refresh),
}


def _attention_heads(module: nn.MultiheadAttention) -> list[Cut]:
    width = module.head_dim
    return [Cut("in_proj_weight", 0, 3, width), Cut("in_proj_bias", 0, 3, width)]


_ATTENTION = {"head": Layout(_attention_heads, ("num_heads",), become_head_pruned)}


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
NORM_LAYOUT = Layout(_fixed(Cut("weight", 0), Cut("bias", 0)), (), _norm_shape, _norm_width)
_NORM = {"channel": NORM_LAYOUT}


def is_norm(module: nn.Module) -> bool:
    """A LayerNorm or RMSNorm, or a module that looks like one: no children, and a weight
    vector (perhaps with a bias vector) or no parameters and one normalised dimension."""
    if isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
        return len(module.normalized_shape) == 1
    params = dict(module.named_parameters(recurse=False))
    shape = getattr(module, "normalized_shape", None)
    return (
        not any(True for _ in module.children())
        and not _known(module)
        and (
            (
                set(params) in ({"weight"}, {"weight", "bias"})
                and all(p.ndim == 1 for p in params.values())
            )
            or (not params and isinstance(shape, (tuple, list)) and len(shape) == 1)
        )
    )


def _known(module: nn.Module) -> bool:
    return any(kind in LAYOUTS for kind in type(module).__mro__)


LAYOUTS: dict[type, dict[str, Layout]] = {
    nn.Linear: {
        "out": Layout(_fixed(Cut("weight", 0), Cut("bias", 0)), ("out_features",)),
        "in": Layout(_fixed(Cut("weight", 1)), ("in_features",)),
    },
    **{c: _CONV for c in (nn.Conv1d, nn.Conv2d, nn.Conv3d)},
    **{c: _CONV_TRANSPOSE for c in (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)},
    **{c: _BATCHNORM for c in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)},
    nn.GroupNorm: _GROUPNORM,
    **{c: _RNN for c in (nn.LSTM, nn.GRU, nn.RNN)},
    nn.MultiheadAttention: _ATTENTION,
    nn.Embedding: {"out": Layout(_fixed(Cut("weight", 1)), ("embedding_dim",))},
    nn.LayerNorm: _NORM,
    nn.RMSNorm: _NORM,
}


# layers of optional libraries, by qualified name so that they need not be imported here
NAMED_LAYOUTS: dict[str, dict[str, Layout]] = {
    "transformers.pytorch_utils.Conv1D": {  # GPT-2's Linear with the weight transposed
        "out": Layout(_fixed(Cut("weight", 1), Cut("bias", 0)), ("nf",)),
        "in": Layout(_fixed(Cut("weight", 0)), ("nx",)),
    },
}


def param_role(kind: str, attr: str, dim: int) -> str:
    """A role on one tensor of a module that has no layout: dimension ``dim`` of ``attr``.
    The dependency graph finds such roles from the functions a custom module calls on its
    own parameters (``F.conv2d(x, self.weight)``, ``x * self.gamma``), so that module needs
    no entry here."""
    return f"{kind}@{attr}:{dim}"


@functools.cache
def _param_layout(role: str) -> Layout:
    attr, _, dim = role.partition("@")[2].rpartition(":")
    return Layout(
        _fixed(Cut(attr, int(dim))), (), count=lambda module: getattr(module, attr).shape[int(dim)]
    )


def layout_for(module: nn.Module, role: str) -> Layout:
    if "@" in role:
        return _param_layout(role)
    for kind in type(module).__mro__:
        if kind in LAYOUTS and role in LAYOUTS[kind]:
            return LAYOUTS[kind][role]
        named = NAMED_LAYOUTS.get(f"{kind.__module__}.{kind.__qualname__}", {})
        if role in named:
            return named[role]
    if role == "channel" and is_norm(module):
        return NORM_LAYOUT
    raise TypeError(f"no surgery for the {role} indices of {type(module).__name__}")


def size_of(module: nn.Module, role: str) -> int | None:
    """How many indices ``module`` has in ``role`` (a projection's output rows for "out", its
    input columns for "in"); None when surgery has no such layout for it."""
    try:
        return layout_for(module, role).size(module)
    except TypeError:
        return None


def positions(cut: Cut, indices: torch.Tensor, n: int) -> torch.Tensor:
    """Positions along ``cut.dim`` of the given role indices (each repeated per block), in
    order when the indices are."""
    if cut.width == 1 and cut.blocks == 1:
        return indices
    within = (indices.unsqueeze(1) * cut.width + torch.arange(cut.width)).reshape(-1)
    offsets = n * cut.width * torch.arange(cut.blocks)
    return (within.unsqueeze(0) + offsets.unsqueeze(1)).reshape(-1)


def shrink(module: nn.Module, role: str, keep: torch.Tensor) -> None:
    """Keep only the ``keep`` indices of ``module`` in ``role``; dtype, device, grad kept."""
    layout = layout_for(module, role)
    n = layout.size(module)
    keep = torch.as_tensor(keep, dtype=torch.long).sort().values
    for cut in layout.cuts(module):
        tensor = getattr(module, cut.attr, None)
        if tensor is None:
            continue
        index = positions(cut, keep, n).to(tensor.device)
        _replace(module, cut.attr, tensor.detach().index_select(cut.dim, index))
        mask = module._buffers.get(_MASK_PREFIX + cut.attr)
        if mask is not None:
            module._buffers[_MASK_PREFIX + cut.attr] = mask.index_select(cut.dim, index)
    for attr in layout.size_attrs:
        setattr(module, attr, len(keep))
    if layout.after is not None:
        layout.after(module, keep.tolist())


def refresh_loaded(module: nn.Module, kept_heads: list[int] | None) -> None:
    """Run the fix-ups of ``module``'s type after its sizes were restored from a save."""
    for kind in type(module).__mro__:
        for layout in LAYOUTS.get(kind, {}).values():
            if layout.after is become_head_pruned:
                if kept_heads is not None:
                    become_head_pruned(module, kept_heads)
            elif layout.after is not None:
                layout.after(module, [])
        if kind in LAYOUTS:
            return


Place = tuple[nn.Module, str]


def tied_parameters(model: nn.Module) -> list[list[Place]]:
    """Where one parameter sits in several modules (a language model's head and embedding)."""
    places: dict[int, list[Place]] = {}
    for module in model.modules():
        for attr, param in module._parameters.items():
            if param is not None:
                places.setdefault(id(param), []).append((module, attr))
    return [found for found in places.values() if len(found) > 1]


def retie(ties: list[list[Place]]) -> None:
    """Tie again what surgery replaced in every place: each place got its own smaller copy of
    the same cut, so the first stands for all."""
    for places in ties:
        params = [getattr(module, attr) for module, attr in places]
        if len({id(p) for p in params}) == len(params):  # every place replaced, separately
            for module, attr in places[1:]:
                module._parameters[attr] = params[0]


def _replace(module: nn.Module, attr: str, value: torch.Tensor) -> None:
    old = getattr(module, attr)
    if isinstance(old, nn.Parameter):
        setattr(module, attr, nn.Parameter(value, requires_grad=old.requires_grad))
    else:
        module._buffers[attr] = value
