"""The model dimension of a transformer (its hidden size): one group per residual channel.

Every block reads the residual stream through its norms and its attention and feed-forward input
projections, and writes it through its attention output and feed-forward output projections;
outside the blocks, embeddings write it and norms and heads read it. Removing residual channel j
removes entry j of all of them. A square projection outside the blocks (BERT's pooler) loses its
output j too, so that what reads it (the classifier) still fits.

Unlike a head, a residual channel is not removed exactly even when it carries zeros: LayerNorm
and RMSNorm average over the channels that are left. Fine-tune (or distil) afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from torch import nn

from sensiprune.errors import SensipruneError
from sensiprune.handlers.layouts import size_of
from sensiprune.handlers.norm import NORM_LAYOUT, is_norm
from sensiprune.structure.channels import Group, regular_groups

if TYPE_CHECKING:
    from sensiprune.structure.adapters import Block


def model_dim(blocks: Sequence[Block]) -> int:
    """The width of the residual stream, which every block writes."""
    widths = {size_of(b.module.get_submodule(b.adapter.ffn_out), "out") for b in blocks}
    if len(widths) != 1:
        raise SensipruneError(f"the blocks write residual streams of different widths {widths}")
    return widths.pop()


def slices(model: nn.Module, blocks: Sequence[Block]) -> list[tuple[str, str]]:
    """(layer, role) of every slice along the model dimension; refused, naming it, when a
    parameter of that width is not among them (a ViT's class token, say)."""
    width = model_dim(blocks)
    found: list[tuple[str, str]] = []
    for block in blocks:
        a = block.adapter
        reads = (a.qkv,) if a.qkv else (a.query, a.key, a.value)
        found += [(block.path(p), "in") for p in (*reads, *a.ffn_in)]
        found += [(block.path(p), "out") for p in (a.output, a.ffn_out)]
        found += [
            (block.path(name), "channel")
            for name, m in block.module.named_modules()
            if is_norm(m) and NORM_LAYOUT.size(m) == width
        ]
    inside = tuple(f"{b.name}." for b in blocks)
    for name, module in model.named_modules():
        if name.startswith(inside) or any(name == b.name for b in blocks):
            continue
        if isinstance(module, nn.Embedding) and module.embedding_dim == width:
            found.append((name, "out"))
        elif is_norm(module) and NORM_LAYOUT.size(module) == width:
            found.append((name, "channel"))
        elif size_of(module, "in") == width:
            found.append((name, "in"))
            if size_of(module, "out") == width:  # a pooler: its outputs go with the inputs
                found.append((name, "out"))
    _check_covered(model, found, width)
    return found


def groups(model: nn.Module, blocks: Sequence[Block]) -> list[Group]:
    """Residual channel j: entry j of every slice."""
    found = slices(model, blocks)
    channels = np.arange(model_dim(blocks))
    return regular_groups(found, np.repeat(channels[:, None], len(found), axis=1))


def writers(model: nn.Module, blocks: Sequence[Block]) -> list[str]:
    """The layers that write the residual stream: in a budget, they stand for the hidden size."""
    return [layer for layer, role in slices(model, blocks) if role == "out"]


def _check_covered(model: nn.Module, found: list[tuple[str, str]], width: int) -> None:
    """Every parameter of the model's width belongs to a module with a slice in ``found``."""
    covered = {layer for layer, _ in found}
    for name, param in model.named_parameters(remove_duplicate=False):
        if width in param.shape and name.rpartition(".")[0] not in covered:
            raise SensipruneError(
                f"cannot prune the hidden size: {name} {tuple(param.shape)} has the model's "
                f"width {width} and sensiprune does not know how it meets the residual stream "
                "(the model was not modified); prune 'heads' and 'ffn' instead"
            )
