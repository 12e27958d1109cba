"""What a model's own code and config read about its transformer blocks (head counts, head
sizes, a Hugging Face config), brought in step with a cut or a reload."""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence

from torch import nn

from sensiprune.handlers.layouts import size_of
from sensiprune.structure.adapters import Block, head_counts

log = logging.getLogger(__name__)


def after_surgery(model: nn.Module, blocks: Sequence[Block]) -> None:
    """Everything the blocks' own code reads follows the new shapes: the attention's head
    counts, then the model's config, then a config of its own for a block that needs one."""
    refresh(blocks)
    sync_config(model, blocks)


def bookkeepers(model: nn.Module, blocks: Sequence[Block]) -> list[object]:
    """The objects :func:`after_surgery` may change (to put back if the pruned model fails)."""
    config = getattr(model, "config", None)
    return [b.attention for b in blocks] + ([config] if config is not None else [])


def refresh(blocks: Sequence[Block]) -> None:
    """Head counts follow the projections once heads were cut out."""
    for block in blocks:
        a, attention = block.adapter, block.attention
        query_heads, kv_heads, size = head_counts(block)
        counts = [(a.heads, query_heads), (a.kv_heads, kv_heads)]
        counts.append((a.query_groups, query_heads // kv_heads))  # may change inside groups
        counts += [(total, query_heads * size) for total in a.totals]
        for attr, value in counts:
            if attr is not None and hasattr(attention, attr):
                setattr(attention, attr, value)


def own_config(module: nn.Module, fields: Mapping[str, int]) -> None:
    """Give ``module`` a copy of its config with ``fields`` changed, where they differ: for
    layers whose forward reads sizes from the config every block shares. The fields are kept
    in ``sensiprune_config``, which ``sp.save`` records and ``sp.load`` applies."""
    config = getattr(module, "config", None)
    if config is None or all(getattr(config, k, None) == v for k, v in fields.items()):
        return
    module.config = copy.copy(config)
    for field, value in fields.items():
        setattr(module.config, field, value)
    module.sensiprune_config = dict(fields)


def sync_config(model: nn.Module, blocks: Sequence[Block]) -> None:
    """Write the new sizes into the model's Hugging Face config where it can express them
    (the same width in every block), so ``save_pretrained`` / ``from_pretrained`` round-trip;
    otherwise say that only ``sp.save`` / ``sp.load`` can. A block whose forward reads head
    counts from the shared config and whose counts differ from it gets a config of its own."""
    config = getattr(model, "config", None)
    if config is not None and blocks:
        _describe_in(config, model, blocks)
    for block in blocks:
        a = block.adapter
        if a.config_in_forward and a.config_heads is not None:
            own_config(block.attention, dict(zip(a.config_heads, head_counts(block)[:2])))


def _describe_in(config: object, model: nn.Module, blocks: Sequence[Block]) -> None:
    inexpressible = []
    adapter = blocks[0].adapter
    widths = {size_of(b.module.get_submodule(b.adapter.ffn_out), "in") for b in blocks}
    if len(widths) == 1 and hasattr(config, adapter.config_ffn):
        setattr(config, adapter.config_ffn, widths.pop())
    elif hasattr(config, adapter.config_ffn):
        inexpressible.append("feed-forward widths differ between blocks")
    counts = {head_counts(b) for b in blocks}
    fields = adapter.config_heads
    streams = {size_of(b.module.get_submodule(b.adapter.ffn_out), "out") for b in blocks}
    # stages of different widths (Swin) keep what their config says of them
    width = streams.pop() if len(streams) == 1 else None
    if width is not None and getattr(config, "hidden_size", width) != width:
        config.hidden_size = width
        if fields is None:
            inexpressible.append(
                f"a {adapter.family} config derives the head size from the hidden size"
            )
        if any(hasattr(m, "embed_scale") for m in model.modules()):  # Gemma's √hidden_size
            inexpressible.append("the model scales its embeddings by a function of the width")
    if fields is not None and len(counts) == 1:
        query, kv, size = counts.pop()
        config.head_dim = size  # now explicit
        setattr(config, fields[0], query)
        setattr(config, fields[1], kv)
    elif any(q != getattr(config, "num_attention_heads", q) for q, _, _ in counts):
        inexpressible.append(
            "head counts differ between blocks"
            if len(counts) > 1
            else f"a {adapter.family} config derives the head size from the head count"
        )
    if inexpressible:
        log.warning(
            "the model's config cannot describe the pruned shapes (%s): save with sp.save and "
            "load with sp.load, not save_pretrained",
            "; ".join(inexpressible),
        )
