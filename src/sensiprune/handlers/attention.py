"""torch's MultiheadAttention, cut by head, and its Transformer layers.

``nn.MultiheadAttention`` derives its head size from ``embed_dim // num_heads``, so it cannot run
with fewer heads at the same model width. Structured pruning turns a pruned instance into
:class:`HeadPrunedAttention` in place: same parameters (``in_proj_weight`` holds 3 x kept_heads
x head_dim rows, ``out_proj`` reads kept_heads x head_dim columns), same call signature, and
its own forward.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from sensiprune.handlers.base import Cut, Handler, Layout, register
from sensiprune.structure.channels import Flow

if TYPE_CHECKING:
    from sensiprune.structure.graph import ChannelTracer


class HeadPrunedAttention(nn.MultiheadAttention):
    """Attention over the kept heads only; ``kept_heads`` are their original indices."""

    kept_heads: list[int]

    def forward(  # type: ignore[override]
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batched = query.dim() == 3
        if not batched:
            query, key, value = (t.unsqueeze(1) for t in (query, key, value))
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
        elif self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        target, batch, _ = query.shape
        source = key.shape[0]
        heads, size = self.num_heads, self.head_dim
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = (None,) * 3 if self.in_proj_bias is None else self.in_proj_bias.chunk(3)

        def split(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, n: int) -> torch.Tensor:
            return F.linear(x, w, b).reshape(n, batch, heads, size).permute(1, 2, 0, 3)

        q, k, v = (
            split(query, w_q, b_q, target),
            split(key, w_k, b_k, source),
            split(value, w_v, b_v, source),
        )
        mask = self._additive_mask(attn_mask, key_padding_mask, is_causal, target, source, q)
        scores = q @ k.transpose(-2, -1) / math.sqrt(size)
        if mask is not None:
            scores = scores + mask
        weights = scores.softmax(-1)
        if self.training and self.dropout > 0:
            weights = F.dropout(weights, p=self.dropout)
        out = (weights @ v).permute(2, 0, 1, 3).reshape(target, batch, heads * size)
        out = self.out_proj(out)
        if self.batch_first and batched:
            out = out.transpose(0, 1)
        if not batched:
            out = out.squeeze(1)
        if not need_weights:
            return out, None
        returned = weights.mean(1) if average_attn_weights else weights
        return out, returned if batched else returned.squeeze(0)

    def _additive_mask(
        self,
        attn_mask: torch.Tensor | None,
        key_padding_mask: torch.Tensor | None,
        is_causal: bool,
        target: int,
        source: int,
        like: torch.Tensor,
    ) -> torch.Tensor | None:
        """One float mask (batch, heads, target, source); True in a bool mask means 'masked'."""
        mask = None
        if attn_mask is None and is_causal:
            attn_mask = torch.ones(target, source, dtype=torch.bool, device=like.device).triu(1)
        if attn_mask is not None:
            mask = _as_additive(attn_mask, like)
            if mask.dim() == 3:  # one mask per (batch x original head): keep the kept heads
                original = mask.shape[0] // like.shape[0]
                mask = mask.reshape(like.shape[0], original, target, source)[:, self.kept_heads]
        if key_padding_mask is not None:
            padding = _as_additive(key_padding_mask, like)[:, None, None, :]
            mask = padding if mask is None else mask + padding
        return mask


def _as_additive(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    mask = mask.to(like.device)
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=like.dtype, device=like.device).masked_fill(
            mask, float("-inf")
        )
    return mask.to(like.dtype)


def prunable_heads(module: nn.Module) -> bool:
    """Packed q/k/v projections and no extra key/value biases: the layout heads are cut by."""
    return (
        isinstance(module, nn.MultiheadAttention)
        and module.in_proj_weight is not None
        and module.bias_k is None
    )


def become_head_pruned(module: nn.MultiheadAttention, kept: list[int]) -> None:
    """Turn ``module`` into a HeadPrunedAttention keeping the original heads ``kept``."""
    previous = getattr(module, "kept_heads", None)
    module.__class__ = HeadPrunedAttention
    module.kept_heads = list(kept) if previous is None else [previous[i] for i in kept]
    # the fused inference path of TransformerEncoderLayer assumes embed_dim = heads x head_dim;
    # this flag sends it down the regular path, which calls our forward
    module._qkv_same_embed_dim = False


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


def _transformer_layers(
    t: ChannelTracer, node: fx.Node, layer: str, module: nn.Module, flow: Flow
) -> Any:
    """Encoder/decoder layers: the feed-forward neurons (linear1 rows, linear2 columns) of
    each layer form free groups; the model dimension runs through LayerNorm and residuals and
    stays pinned, and attention heads are left to :func:`_heads`."""
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


def _head_rows(module: nn.MultiheadAttention) -> list[Cut]:
    width = module.head_dim
    return [Cut("in_proj_weight", 0, 3, width), Cut("in_proj_bias", 0, 3, width)]


register(
    nn.MultiheadAttention,
    handler=Handler(_attention, {"head": Layout(_head_rows, ("num_heads",), become_head_pruned)}),
)
register(
    nn.TransformerEncoderLayer,
    nn.TransformerDecoderLayer,
    nn.TransformerEncoder,
    nn.TransformerDecoder,
    handler=Handler(_transformer_layers),
)
