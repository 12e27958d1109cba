"""Transformer blocks whose layout is known, so that heads and feed-forward neurons are pruned
without tracing the model.

Tracing Hugging Face models is where structured pruning tools most often hang or crash, and
transformers 5 no longer has ``prune_heads``. An adapter names, for one family, the parts of a
block: the query, key, value and output projections of its attention, the module that counts the
heads, and the two projections of its feed-forward network. Groups follow directly: a head is
``head_size`` rows of query, key and value plus the same columns of the output projection, and a
feed-forward neuron is a row of the first projection plus a column of the second. The model
dimension (residual stream, LayerNorm) is left as it is. A new family is one more entry in
``ADAPTERS``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .channels import DependencyGraph, Group, Member
from .errors import SensipruneError
from .measure import counted_forward

HEADS, FFN = "heads", "ffn"  # budget keys that stand for every block's heads / FFN neurons


@dataclass(frozen=True)
class BlockAdapter:
    family: str
    query: str
    key: str
    value: str
    output: str
    attention: str  # the module that holds the head count
    heads: str  # its attribute: the number of heads
    head_size: str  # its attribute: the width of one head
    total: str  # its attribute: heads x head size, kept in step
    ffn_in: str
    ffn_out: str

    def matches(self, block: nn.Module) -> bool:
        try:
            attention = block.get_submodule(self.attention)
            parts = [block.get_submodule(p) for p in self._linears()]
        except AttributeError:
            return False
        return all(isinstance(p, nn.Linear) for p in parts) and all(
            isinstance(getattr(attention, a, None), int) for a in (self.heads, self.head_size)
        )

    def _linears(self) -> tuple[str, ...]:
        return (self.query, self.key, self.value, self.output, self.ffn_in, self.ffn_out)


ADAPTERS = (
    BlockAdapter(  # BERT, RoBERTa, MiniLM, ELECTRA, ... (transformers' Bert*Layer layout)
        family="BERT-style encoder layer",
        query="attention.self.query",
        key="attention.self.key",
        value="attention.self.value",
        output="attention.output.dense",
        attention="attention.self",
        heads="num_attention_heads",
        head_size="attention_head_size",
        total="all_head_size",
        ffn_in="intermediate.dense",
        ffn_out="output.dense",
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
    a = block.adapter
    heads, size = getattr(block.attention, a.heads), getattr(block.attention, a.head_size)
    for head in range(heads):
        rows = range(head * size, (head + 1) * size)
        members = [Member(block.path(p), "out", i) for p in (a.query, a.key, a.value) for i in rows]
        members += [Member(block.path(a.output), "in", i) for i in rows]
        yield Group(members)
    width = block.module.get_submodule(a.ffn_in).out_features
    for j in range(width):
        yield Group(
            [Member(block.path(a.ffn_in), "out", j), Member(block.path(a.ffn_out), "in", j)]
        )


def refresh(blocks: Sequence[Block]) -> None:
    """Head counts follow the projections once heads were cut out."""
    for block in blocks:
        a, attention = block.adapter, block.attention
        size = getattr(attention, a.head_size)
        heads = block.module.get_submodule(a.query).out_features // size
        setattr(attention, a.heads, heads)
        if hasattr(attention, a.total):
            setattr(attention, a.total, heads * size)


def expand_budget(
    budget: Mapping[str, float], blocks: Sequence[Block], model: nn.Module
) -> dict[str, float]:
    """``{"heads": s, "ffn": t}`` becomes a sparsity for every block's heads and FFN."""
    expanded = {k: v for k, v in budget.items() if k not in (HEADS, FFN)}
    if HEADS in budget:
        attention = [b.path(b.adapter.query) for b in blocks] + [
            name for name, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)
        ]
        if not attention:
            raise SensipruneError(_no_heads_message(model))
        expanded.update(dict.fromkeys(attention, budget[HEADS]))
    if FFN in budget:
        if not blocks:
            raise SensipruneError(
                "a budget for 'ffn' needs transformer blocks sensiprune understands; "
                f"known layouts: {', '.join(a.family for a in ADAPTERS)}"
            )
        expanded.update({b.path(b.adapter.ffn_in): budget[FFN] for b in blocks})
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
