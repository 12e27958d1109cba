"""Transformer blocks whose layout is known, so that heads and feed-forward neurons are pruned
without tracing the model.

Tracing Hugging Face models is where structured pruning tools most often hang or crash, and
transformers 5 no longer has ``prune_heads``. An adapter names, for one family, the parts of a
block: the query, key, value and output projections of its attention, the module that keeps the
head bookkeeping, and the projections of its feed-forward network. Groups follow directly: a
head is ``head_size`` rows of query, key and value plus the same columns of the output
projection (with grouped-query attention, one key/value head and every query head that reads
it), and a feed-forward neuron is a row of each input projection (gate and up in a gated MLP)
plus a column of the output one. The model dimension (residual stream, LayerNorm / RMSNorm) is
left as it is. A new family is one more entry in ``ADAPTERS``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .channels import DependencyGraph, Group, Member
from .errors import SensipruneError
from .measure import counted_forward

log = logging.getLogger(__name__)
HEADS, FFN = "heads", "ffn"  # budget keys that stand for every block's heads / FFN neurons


@dataclass(frozen=True)
class BlockAdapter:
    family: str
    query: str
    key: str
    value: str
    output: str
    attention: str  # the module that holds the head bookkeeping
    head_size: str  # its attribute: the width of one head
    ffn_in: tuple[str, ...]  # projections into the FFN (gate and up of a gated MLP)
    ffn_out: str
    heads: str | None = None  # its attribute counting query heads, kept in step
    total: str | None = None  # its attribute holding heads x head size, kept in step
    query_groups: str | None = None  # query heads per key/value head (grouped-query attention)
    # config fields that describe the head counts, when the config has its own head size
    config_heads: tuple[str, str] | None = None  # (query heads, key/value heads)

    def matches(self, block: nn.Module) -> bool:
        try:
            attention = block.get_submodule(self.attention)
            parts = [block.get_submodule(p) for p in self._linears()]
        except AttributeError:
            return False
        counts = [self.head_size] + ([self.query_groups] if self.query_groups else [])
        return all(isinstance(p, nn.Linear) for p in parts) and all(
            isinstance(getattr(attention, a, None), int) for a in counts
        )

    def _linears(self) -> tuple[str, ...]:
        return (self.query, self.key, self.value, self.output, *self.ffn_in, self.ffn_out)


ADAPTERS = (
    BlockAdapter(  # BERT, RoBERTa, MiniLM, ELECTRA, ... (transformers' Bert*Layer layout)
        family="BERT-style encoder layer",
        query="attention.self.query",
        key="attention.self.key",
        value="attention.self.value",
        output="attention.output.dense",
        attention="attention.self",
        head_size="attention_head_size",
        ffn_in=("intermediate.dense",),
        ffn_out="output.dense",
        heads="num_attention_heads",
        total="all_head_size",
    ),
    BlockAdapter(  # ViT (transformers 5): patch tokens, q/k/v/o projections, fc1/fc2 MLP
        family="ViT-style encoder layer",
        query="attention.q_proj",
        key="attention.k_proj",
        value="attention.v_proj",
        output="attention.o_proj",
        attention="attention",
        head_size="head_dim",
        ffn_in=("mlp.fc1",),
        ffn_out="mlp.fc2",
        heads="num_attention_heads",
    ),
    BlockAdapter(  # Llama, Mistral, Qwen2/3, ...: rotary, grouped-query attention, gated MLP
        family="Llama-style decoder layer",
        query="self_attn.q_proj",
        key="self_attn.k_proj",
        value="self_attn.v_proj",
        output="self_attn.o_proj",
        attention="self_attn",
        head_size="head_dim",
        ffn_in=("mlp.gate_proj", "mlp.up_proj"),
        ffn_out="mlp.down_proj",
        query_groups="num_key_value_groups",
        config_heads=("num_attention_heads", "num_key_value_heads"),
    ),
)


@dataclass(frozen=True)
class Block:
    name: str
    module: nn.Module
    adapter: BlockAdapter

    def path(self, part: str) -> str:
        return f"{self.name}.{part}" if self.name else part

    @property
    def attention(self) -> nn.Module:
        return self.module.get_submodule(self.adapter.attention)


def find_blocks(model: nn.Module) -> list[Block]:
    """Every block an adapter understands (outermost first; nothing inside one is searched)."""
    found: list[Block] = []
    for name, module in model.named_modules():
        if any(name.startswith(f"{b.name}.") for b in found):
            continue
        adapter = next((a for a in ADAPTERS if a.matches(module)), None)
        if adapter is not None:
            found.append(Block(name, module, adapter))
    return found


def build_graph(
    model: nn.Module, blocks: Sequence[Block], inputs: Sequence[torch.Tensor]
) -> DependencyGraph:
    """Head and FFN-neuron groups of every block, and one counted forward pass."""
    groups = [group for block in blocks for group in _block_groups(block)]
    flops, shapes = counted_forward(model, inputs, "the model does not run on example_inputs")
    untouched = {"the model dimension": "residual stream and LayerNorm of every block"}
    return DependencyGraph(groups, untouched, flops, shapes)


def _block_groups(block: Block) -> Iterator[Group]:
    """One group per key/value head (with the query heads that read it: grouped-query
    attention loses whole groups, so every group keeps its ratio), then one per FFN neuron."""
    a, module = block.adapter, block.module
    size = getattr(block.attention, a.head_size)
    per_kv = getattr(block.attention, a.query_groups) if a.query_groups else 1
    for kv in range(module.get_submodule(a.key).out_features // size):
        kv_rows = range(kv * size, (kv + 1) * size)
        q_rows = range(kv * per_kv * size, (kv + 1) * per_kv * size)
        members = [Member(block.path(p), "out", i) for p in (a.key, a.value) for i in kv_rows]
        members += [Member(block.path(a.query), "out", i) for i in q_rows]
        members += [Member(block.path(a.output), "in", i) for i in q_rows]
        yield Group(members)
    width = module.get_submodule(a.ffn_in[0]).out_features
    for j in range(width):
        members = [Member(block.path(p), "out", j) for p in a.ffn_in]
        yield Group([*members, Member(block.path(a.ffn_out), "in", j)])


def refresh(blocks: Sequence[Block]) -> None:
    """Head counts follow the projections once heads were cut out."""
    for block in blocks:
        a, attention = block.adapter, block.attention
        size = getattr(attention, a.head_size)
        heads = block.module.get_submodule(a.query).out_features // size
        for attr, value in ((a.heads, heads), (a.total, heads * size)):
            if attr is not None and hasattr(attention, attr):
                setattr(attention, attr, value)


def sync_config(model: nn.Module, blocks: Sequence[Block]) -> None:
    """Write the new sizes into the model's Hugging Face config where it can express them
    (the same width in every block), so ``save_pretrained`` / ``from_pretrained`` round-trip;
    otherwise say that only ``sp.save`` / ``sp.load`` can."""
    config = getattr(model, "config", None)
    if config is None or not blocks:
        return
    inexpressible = []
    widths = {b.module.get_submodule(b.adapter.ffn_in[0]).out_features for b in blocks}
    if len(widths) == 1 and hasattr(config, "intermediate_size"):
        config.intermediate_size = widths.pop()
    elif hasattr(config, "intermediate_size"):
        inexpressible.append("feed-forward widths differ between blocks")
    counts = {_head_counts(b) for b in blocks}
    fields = blocks[0].adapter.config_heads
    if fields is not None and len(counts) == 1:
        (query, kv), first = counts.pop(), blocks[0]
        config.head_dim = getattr(first.attention, first.adapter.head_size)  # now explicit
        setattr(config, fields[0], query)
        setattr(config, fields[1], kv)
    elif any(q != getattr(config, "num_attention_heads", q) for q, _ in counts):
        inexpressible.append(
            "head counts differ between blocks"
            if len(counts) > 1
            else f"a {blocks[0].adapter.family} config derives the head size from the head count"
        )
    if inexpressible:
        log.warning(
            "the model's config cannot describe the pruned shapes (%s): save with sp.save and "
            "load with sp.load, not save_pretrained",
            "; ".join(inexpressible),
        )


def _head_counts(block: Block) -> tuple[int, int]:
    a = block.adapter
    size = getattr(block.attention, a.head_size)
    return (
        block.module.get_submodule(a.query).out_features // size,
        block.module.get_submodule(a.key).out_features // size,
    )


def kind_layers(
    budget: Mapping[str, float], blocks: Sequence[Block], model: nn.Module
) -> dict[str, list[str]]:
    """For the ``"heads"`` / ``"ffn"`` keys of a budget, the layers whose groups they mean."""
    kinds: dict[str, list[str]] = {}
    if HEADS in budget:
        kinds[HEADS] = [b.path(b.adapter.query) for b in blocks] + [
            name for name, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)
        ]
        if not kinds[HEADS]:
            raise SensipruneError(_no_heads_message(model))
    if FFN in budget:
        if not blocks:
            raise SensipruneError(
                "a budget for 'ffn' needs transformer blocks sensiprune understands; "
                f"known layouts: {', '.join(a.family for a in ADAPTERS)}"
            )
        kinds[FFN] = [b.path(b.adapter.ffn_in[0]) for b in blocks]
    return kinds


def expand_budget(budget: Mapping[str, float], kinds: Mapping[str, list[str]]) -> dict[str, float]:
    """``{"heads": s, "ffn": t}`` becomes a sparsity for every layer of :func:`kind_layers`."""
    expanded = {k: v for k, v in budget.items() if k not in (HEADS, FFN)}
    for kind, layers in kinds.items():
        expanded.update(dict.fromkeys(layers, budget[kind]))
    return expanded


def _no_heads_message(model: nn.Module) -> str:
    unknown = [
        f"{name} ({type(m).__name__})"
        for name, m in model.named_modules()
        if "attention" in type(m).__name__.lower() and not isinstance(m, nn.MultiheadAttention)
    ]
    where = f": {', '.join(unknown[:3])} is not a layout sensiprune knows" if unknown else ""
    return (
        "a budget for 'heads' needs attention sensiprune understands (nn.MultiheadAttention, "
        f"or {', '.join(a.family for a in ADAPTERS)}){where}; the model was not modified"
    )
