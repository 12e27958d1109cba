"""Budget kinds ("heads", "ffn") for a model no adapter knows, read off its traced graph.

A head is a group the attention rules made (function_rules: one channel per head in the
query, key and value of ``scaled_dot_product_attention`` or ``q @ k^T``). A feed-forward
neuron is a channel of a family that linear layers write and that stays inside one block: every
producer sits in the same element of a ``ModuleList`` or ``Sequential`` (a transformer layer),
so the residual stream, which the embeddings and every block write, is never one; a shared
layer (ALBERT) is one block wherever it runs. Nothing here names a model family.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
from torch import nn

from sensiprune.errors import SensipruneError
from sensiprune.structure.adapters import FFN, HEADS, KINDS
from sensiprune.structure.channels import DependencyGraph, flat_members, role_kind


def kind_layers(
    budget: Mapping[str, float], graph: DependencyGraph, model: nn.Module
) -> dict[str, list[str]]:
    """For the keys of ``budget`` that stand for every block, the layers whose groups they
    mean in ``graph``."""
    unsupported = sorted(set(budget) & set(KINDS) - {HEADS, FFN})
    if unsupported:
        raise SensipruneError(
            f"a budget for {unsupported[0]!r} needs transformer blocks sensiprune has a layout "
            "for; for this model, budget 'heads', 'ffn' or layer names"
        )
    # found by the attention rules, or nn.MultiheadAttention's own (read column-wise: listing
    # the members of every group of a large model would cost more than the graph)
    keys, owner, key, _ = flat_members(graph.groups)
    mha = [k for k, (_, role) in enumerate(keys) if role_kind(role) == "head"]
    head_groups = graph.heads | set(owner[np.isin(key, mha)].tolist())
    heads = _layers(graph, head_groups)
    kinds: dict[str, list[str]] = {}
    if HEADS in budget:
        if not heads:
            raise SensipruneError(_none_found(graph, "attention heads"))
        kinds[HEADS] = heads
    if FFN in budget:
        modules = dict(model.named_modules())
        families = {g.producers for g in graph.groups}  # groups of one family share producers
        inside = {f for f in families if _inside_one_block(f, modules)}
        ffn = [
            number
            for number, group in enumerate(graph.groups)
            if number not in head_groups and group.producers in inside
        ]
        kinds[FFN] = _layers(graph, ffn)
        if not kinds[FFN]:
            raise SensipruneError(_none_found(graph, "feed-forward neurons"))
    return kinds


def _layers(graph: DependencyGraph, numbers: Iterable[int]) -> list[str]:
    return sorted({layer for n in numbers for layer in graph.groups[n].producers})


def _inside_one_block(producers: frozenset[str], modules: Mapping[str, nn.Module]) -> bool:
    blocks = {_block_of(layer, modules) for layer in producers}
    return (
        None not in blocks
        and len(blocks) == 1
        and all(_linear(modules[layer]) for layer in producers)
    )


def _block_of(layer: str, modules: Mapping[str, nn.Module]) -> str | None:
    """The innermost element of a container of layers (``ModuleList``, ``Sequential``) that
    holds ``layer``."""
    parts = layer.split(".")
    for end in range(len(parts) - 1, 0, -1):
        parent = modules.get(".".join(parts[: end - 1]))
        if isinstance(parent, (nn.ModuleList, nn.Sequential)):
            return ".".join(parts[:end])
    return None


def _linear(module: nn.Module) -> bool:
    """Reads each token on its own: a weight matrix (Linear, GPT-2's Conv1D, a custom
    projection), or a convolution of kernel size 1."""
    if isinstance(module, nn.Embedding):
        return False
    if isinstance(module, nn.modules.conv._ConvNd):
        return all(k == 1 for k in module.kernel_size) and module.groups == 1
    return any(p.ndim == 2 for p in module.parameters(recurse=False))


def _none_found(graph: DependencyGraph, what: str) -> str:
    places = [f"{where}: {why}" for where, why in list(graph.untouched.items())[:3]]
    left = f"; left alone: {'; '.join(places)}" if places else ""
    return f"no {what} found in the model's graph{left}; the model was not modified"
