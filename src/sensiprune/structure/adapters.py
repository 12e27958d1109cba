"""Transformer blocks whose layout is known, so that heads and feed-forward neurons are pruned
without tracing the model.

Tracing Hugging Face models is where structured pruning tools most often hang or crash, and
transformers 5 no longer has ``prune_heads``. An adapter names, for one family, the parts of a
block: the query, key, value (or fused qkv) and output projections of its attention, the module
that keeps the head bookkeeping, and the projections of its feed-forward network. Groups follow
directly: a head is ``head_size`` rows of query, key and value, wherever the layout puts them,
plus the same columns of the output projection (with grouped-query attention, one key/value head
and every query head that reads it), and a feed-forward neuron is a row of each input projection
(gate and up in a gated MLP) plus a column of the output one. The model dimension stays unless a
budget names it (``hidden.py``). A new family is one more entry in ``ADAPTERS``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from sensiprune.errors import SensipruneError
from sensiprune.handlers.layouts import size_of
from sensiprune.measure import counted_forward
from sensiprune.structure import hidden
from sensiprune.structure.channels import DependencyGraph, Group, regular_groups

# budget keys that stand for every block's heads / query heads inside key-value groups / FFN
# neurons, and for the model dimension
HEADS, QUERY_HEADS, FFN, HIDDEN = "heads", "query_heads", "ffn", "hidden"
KINDS = (HEADS, QUERY_HEADS, FFN, HIDDEN)


@dataclass(frozen=True)
class BlockAdapter:
    family: str
    output: str
    attention: str  # the module that holds the head bookkeeping
    head_size: str  # its attribute: the width of one head
    ffn_in: tuple[str, ...]  # projections into the FFN (gate and up of a gated MLP)
    ffn_out: str
    query: str | None = None
    key: str | None = None
    value: str | None = None
    qkv: str | None = None  # one projection for query, key and value, instead of three
    interleaved: bool = False  # qkv rows head by head, [q k v] per head (GPT-NeoX), not [Q K V]
    gate_up: bool = False  # ffn_in[0] holds the gate rows, then the up rows (Phi-3)
    heads: str | None = None  # the attention's attribute counting query heads, kept in step
    kv_heads: str | None = None  # ... counting key/value heads
    totals: tuple[str, ...] = ()  # ... holding (query) heads x head size
    query_groups: str | None = None  # query heads per key/value head (grouped-query attention)
    # config fields that describe the head counts, when the config has its own head size
    config_heads: tuple[str, str] | None = None  # (query heads, key/value heads)
    config_ffn: str = "intermediate_size"
    # the forward reads the head counts from the config the blocks share: a block whose count
    # differs gets a config of its own
    config_in_forward: bool = False

    @property
    def head_layer(self) -> str:
        """The projection whose name stands for the block's heads in a budget."""
        return self.qkv or self.query or ""

    def matches(self, name: str, modules: Mapping[str, nn.Module]) -> bool:
        """Whether module ``name`` of a model (``modules``: all of them by name) is a block of
        this family: every named part is there, with the layouts and counts it should have."""

        def part(path: str) -> nn.Module | None:
            return modules.get(f"{name}.{path}" if name else path)

        attention = part(self.attention)
        if attention is None:  # most modules of any model: no need to look further
            return False
        parts = [part(p) for p in self._projections()]
        if None in parts:
            return False
        counts = [self.head_size] + ([self.query_groups] if self.query_groups else [])
        return all(
            size_of(p, "out") is not None and size_of(p, "in") is not None for p in parts
        ) and all(isinstance(getattr(attention, a, None), int) for a in counts)

    def _projections(self) -> tuple[str, ...]:
        attention = (self.qkv,) if self.qkv else (self.query, self.key, self.value)
        if None in attention:
            raise ValueError(f"{self.family}: name qkv, or query, key and value")
        return (*attention, self.output, *self.ffn_in, self.ffn_out)


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
        totals=("all_head_size",),
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
    BlockAdapter(  # Phi-3: one qkv projection [Q K V] with grouped-query attention, gate_up
        family="Phi-3-style decoder layer",
        qkv="self_attn.qkv_proj",
        output="self_attn.o_proj",
        attention="self_attn",
        head_size="head_dim",
        ffn_in=("mlp.gate_up_proj",),
        ffn_out="mlp.down_proj",
        gate_up=True,
        kv_heads="num_key_value_heads",
        query_groups="num_key_value_groups",
        config_heads=("num_attention_heads", "num_key_value_heads"),
        config_in_forward=True,
    ),
    BlockAdapter(  # GPT-NeoX, Pythia: one qkv projection laid out head by head
        family="GPT-NeoX-style decoder layer",
        qkv="attention.query_key_value",
        interleaved=True,
        output="attention.dense",
        attention="attention",
        head_size="head_size",
        ffn_in=("mlp.dense_h_to_4h",),
        ffn_out="mlp.dense_4h_to_h",
    ),
    BlockAdapter(  # GPT-2: Conv1D projections (weights transposed), c_attn split [Q K V]
        family="GPT-2-style decoder block",
        qkv="attn.c_attn",
        output="attn.c_proj",
        attention="attn",
        head_size="head_dim",
        ffn_in=("mlp.c_fc",),
        ffn_out="mlp.c_proj",
        heads="num_heads",
        totals=("split_size",),
        config_ffn="n_inner",
    ),
)


# the config fields sync_config may write: sp.save records them and sp.load puts them back
CONFIG_FIELDS = tuple(
    sorted(
        {"head_dim", "hidden_size"}
        | {a.config_ffn for a in ADAPTERS}
        | {f for a in ADAPTERS for f in a.config_heads or ()}
    )
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
    modules = dict(model.named_modules())
    for name, module in modules.items():
        if any(name.startswith(f"{b.name}.") for b in found):
            continue
        adapter = next((a for a in ADAPTERS if a.matches(name, modules)), None)
        if adapter is not None:
            found.append(Block(name, module, adapter))
    return found


def build_graph(
    model: nn.Module,
    blocks: Sequence[Block],
    inputs: Sequence[torch.Tensor],
    kinds: Collection[str] = (),
) -> DependencyGraph:
    """Head and FFN-neuron groups of every block, and one counted forward pass. With
    ``query_heads`` among ``kinds``, a block with grouped-query attention has one group per
    query head (to be scored, then merged by :func:`pair_query_heads`) instead of one per
    key/value group; with ``hidden``, there is a group per channel of the model dimension."""
    split = QUERY_HEADS in kinds
    groups = [group for block in blocks for group in _block_groups(block, split)]
    flops, shapes = counted_forward(model, inputs, "the model does not run on example_inputs")
    untouched = {}
    if HIDDEN in kinds:
        width = hidden.model_dim(blocks)
        if any(shape and shape[-1] == width for shape in shapes):
            raise SensipruneError(
                f"cannot prune the hidden size: the model returns its hidden states (width "
                f"{width}), which would shrink with it; prune a model with a task head, or "
                "'heads' and 'ffn' only (the model was not modified)"
            )
        groups += hidden.groups(model, blocks)
    else:
        untouched["the model dimension"] = "residual stream and norms: not in the budget"
    return DependencyGraph(groups, untouched, flops, shapes)


def head_counts(block: Block) -> tuple[int, int, int]:
    """Query heads, key/value heads and head size of a block, read from its projections, so
    they hold before and after any cut: the output projection reads one column block per
    query head, and a fused qkv has a key and a value block per key/value head besides."""
    a, module = block.adapter, block.module
    size = getattr(block.attention, a.head_size)
    query_heads = size_of(module.get_submodule(a.output), "in") // size
    if a.qkv is not None:
        rows = size_of(module.get_submodule(a.qkv), "out") // size
        return query_heads, (rows - query_heads) // 2, size
    return query_heads, size_of(module.get_submodule(a.key), "out") // size, size


def _block_groups(block: Block, split: bool) -> list[Group]:
    """One group per key/value head (with the query heads that read it: grouped-query
    attention loses whole groups, so every group keeps its ratio), then one per FFN neuron;
    with ``split``, one per query head where several share a key/value head."""
    a, module = block.adapter, block.module
    query_heads, kv_heads, size = head_counts(block)
    per_kv = query_heads // kv_heads
    output = [(block.path(a.output), "in")]
    if split and splits_query_groups(block):
        rows = _blocks_of_rows(query_heads, size)  # [Q K V] puts the query rows first
        heads = regular_groups(
            [(block.path(a.head_layer), "out")] * size + output * size, np.hstack([rows, rows])
        )
    else:
        kv_rows, q_rows = _blocks_of_rows(kv_heads, size), _blocks_of_rows(kv_heads, per_kv * size)
        if a.qkv is None:
            keys = [(block.path(p), "out") for p in (a.key, a.value, a.query)]
            keys = [keys[0]] * size + [keys[1]] * size + [keys[2]] * (per_kv * size)
            rows = np.hstack([kv_rows, kv_rows, q_rows])
        elif a.interleaved:  # head h is rows 3·h·size … 3·(h+1)·size − 1: its q, k and v
            rows = _blocks_of_rows(kv_heads, 3 * size)
            keys = [(block.path(a.qkv), "out")] * rows.shape[1]
        else:  # [Q K V]: the key rows start after every query row, the value rows after those
            key_start, value_start = query_heads * size, (query_heads + kv_heads) * size
            rows = np.hstack([q_rows, key_start + kv_rows, value_start + kv_rows])
            keys = [(block.path(a.qkv), "out")] * rows.shape[1]
        heads = regular_groups(keys + output * (per_kv * size), np.hstack([rows, q_rows]))
    width = size_of(module.get_submodule(a.ffn_out), "in")
    neuron = np.arange(width)[:, None]
    if a.gate_up:  # neuron j is row j of the gate half and row width + j of the up half
        keys, rows = [(block.path(a.ffn_in[0]), "out")] * 2, np.hstack([neuron, width + neuron])
    else:
        keys = [(block.path(p), "out") for p in a.ffn_in]
        rows = np.repeat(neuron, len(keys), axis=1)
    ffn = regular_groups([*keys, (block.path(a.ffn_out), "in")], np.hstack([rows, neuron]))
    return heads + ffn


def _blocks_of_rows(count: int, size: int) -> np.ndarray:
    """Row k holds ``k·size`` … ``(k+1)·size − 1``: the rows of the k-th of ``count`` heads."""
    return np.arange(count)[:, None] * size + np.arange(size)


def splits_query_groups(block: Block) -> bool:
    """Whether query heads can go inside this block's key/value groups: grouped-query
    attention whose query rows are a block of their own (not interleaved head by head)."""
    query_heads, kv_heads, _ = head_counts(block)
    return not block.adapter.interleaved and query_heads > kv_heads


def pair_query_heads(
    blocks: Sequence[Block], groups: list[Group], values: torch.Tensor
) -> tuple[list[Group], torch.Tensor]:
    """Merge per-query-head groups so that every key/value group keeps as many query heads as
    every other (the attention repeats each key/value head the same number of times): within
    each key/value group the query heads are ranked by score, and the r-th least important of
    every group become one group, scored by their sum."""
    owners = {b.path(b.adapter.head_layer): b for b in blocks if splits_query_groups(b)}
    merged: dict[tuple[str, int], list[int]] = {}
    kept = []
    for index, group in enumerate(groups):
        block = owners.get(next(iter(group.producers))) if len(group.producers) == 1 else None
        if block is None or not any(m.role == "in" for m in group.members):
            kept.append(index)
            continue
        query_heads, kv_heads, size = head_counts(block)
        head = group.members[0].index // size
        merged.setdefault((block.name, head // (query_heads // kv_heads)), []).append(index)
    by_rank: dict[tuple[str, int], list[int]] = {}
    for (name, _), heads in merged.items():
        ranked = sorted(heads, key=lambda i: (values[i].item(), i))
        for rank, index in enumerate(ranked):
            by_rank.setdefault((name, rank), []).append(index)
    new_groups = [groups[i] for i in kept]
    new_values = [values[i] for i in kept]
    for heads in by_rank.values():
        new_groups.append(Group([m for i in heads for m in groups[i].members]))
        new_values.append(values[heads].sum())
    return new_groups, torch.stack(new_values) if new_values else values[:0]


def kind_layers(
    budget: Mapping[str, float], blocks: Sequence[Block], model: nn.Module
) -> dict[str, list[str]]:
    """For the keys of a budget that stand for every block (:data:`KINDS`), the layers whose
    groups they mean."""
    kinds: dict[str, list[str]] = {}
    if HEADS in budget:
        kinds[HEADS] = [b.path(b.adapter.head_layer) for b in blocks] + [
            name for name, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)
        ]
        if not kinds[HEADS]:
            raise SensipruneError(_no_heads_message(model))
    if QUERY_HEADS in budget:
        if HEADS in budget:
            raise SensipruneError(
                "a budget names 'heads' or 'query_heads', not both: prune whole key/value "
                "groups and query heads inside them in two calls"
            )
        kinds[QUERY_HEADS] = [
            b.path(b.adapter.head_layer) for b in blocks if splits_query_groups(b)
        ]
        if not kinds[QUERY_HEADS]:
            raise SensipruneError(
                "a budget for 'query_heads' needs grouped-query attention (several query heads "
                "per key/value head), as in Llama-style or Phi-3 decoders; this model has "
                "none: use 'heads'"
            )
    if (HIDDEN in budget or FFN in budget) and not blocks:
        kind = HIDDEN if HIDDEN in budget else FFN
        raise SensipruneError(
            f"a budget for {kind!r} needs transformer blocks sensiprune understands; "
            f"known layouts: {', '.join(a.family for a in ADAPTERS)}"
        )
    if HIDDEN in budget:
        kinds[HIDDEN] = hidden.writers(model, blocks)
    if FFN in budget:
        kinds[FFN] = [b.path(b.adapter.ffn_in[0]) for b in blocks]
    return kinds


def expand_budget(budget: Mapping[str, float], kinds: Mapping[str, list[str]]) -> dict[str, float]:
    """``{"heads": s, "ffn": t}`` becomes a sparsity for every layer of :func:`kind_layers`."""
    expanded = {k: v for k, v in budget.items() if k not in KINDS}
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
