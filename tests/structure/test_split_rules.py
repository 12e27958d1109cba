"""Operations on channels spread over heads: rotary embeddings and caches, cut by whole heads."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sensiprune as sp


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2  # a slice end computed in forward
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class _RotaryAttention(nn.Module):
    """Rotary position embeddings over each head's width, a cache concatenated along the
    tokens (starting from a legacy empty tensor), and attention by ``q @ k^T``."""

    def __init__(self, width: int = 24, heads: int = 3) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, width // heads
        self.q, self.k, self.v = (nn.Linear(width, width) for _ in range(3))
        self.o = nn.Linear(width, width)
        self.register_buffer("inv_freq", 1.0 / 100 ** (torch.arange(0, self.head_dim, 2) / 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        shape = (b, t, self.heads, self.head_dim)
        q, k, v = (p(x).view(shape).transpose(1, 2) for p in (self.q, self.k, self.v))
        angles = torch.arange(t)[:, None] * self.inv_freq[None]
        cos, sin = (f(torch.cat((angles, angles), -1))[None, None] for f in (torch.cos, torch.sin))
        q, k = (y * cos + _rotate_half(y) * sin for y in (q, k))
        k = torch.cat([torch.tensor([]), k], dim=-2)
        weights = F.softmax(q @ k.transpose(-2, -1) / self.head_dim**0.5, -1)
        return self.o((weights @ v).transpose(1, 2).reshape(b, t, -1))


class _Model(nn.Module):
    """Two residual attention blocks made by ``block``, between a stem and a head."""

    def __init__(self, block: Callable[[], nn.Module] = _RotaryAttention, width: int = 24) -> None:
        super().__init__()
        self.embed = nn.Linear(8, width)
        self.layers = nn.ModuleList(block() for _ in range(2))
        self.head = nn.Linear(width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for layer in self.layers:
            x = x + layer(x)
        return self.head(x)


def test_rotary_embeddings_and_a_cache_keep_whole_heads_prunable():
    torch.manual_seed(0)
    model, x = _Model(), torch.randn(2, 6, 8)
    result = sp.prune(
        model,
        {"heads": 1 / 3},
        criterion="magnitude",
        structured=True,
        example_inputs=x,
        scope="layer",
    )
    for layer in model.layers:
        assert layer.heads == 2 and layer.head_dim == 8 and layer.q.out_features == 16
    assert result.untouched == () and model(x).shape == (2, 6, 3)


def test_a_cut_of_each_heads_width_is_refused_where_rotary_tables_span_it():
    torch.manual_seed(0)
    model, x = _Model(), torch.randn(2, 6, 8)
    sp.prune(model, 0.5, criterion="magnitude", structured=True, example_inputs=x, scope="layer",
             ignore=["head"])  # fmt: skip
    for layer in model.layers:  # heads go, each head's width stays whole
        assert layer.head_dim == 8 and layer.q.out_features < 24
    assert model(x).shape == (2, 6, 3)


def _rotate_every_two(x: torch.Tensor) -> torch.Tensor:
    return torch.stack((-x[..., 1::2], x[..., ::2]), dim=-1).flatten(-2)


class _BiasedAttention(nn.Module):
    """Weights read as ``x @ W.T``, rotary pairs interleaved (``stack`` then ``flatten``), a
    learned bias per head passed to ``scaled_dot_product_attention`` as its mask, and the
    heads merged back to a width computed in forward."""

    def __init__(self, width: int = 24, heads: int = 3) -> None:
        super().__init__()
        self.heads, self.inner = heads, width
        self.wq, self.wk, self.wv = (nn.Parameter(torch.randn(width, width) / 5) for _ in range(3))
        self.bias = nn.Embedding(11, heads)
        self.o = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = (
            (x @ w.T).view(b, t, self.heads, -1).transpose(1, 2)
            for w in (self.wq, self.wk, self.wv)
        )
        q, k = _rotate_every_two(q), _rotate_every_two(k)
        distance = (torch.arange(t)[None] - torch.arange(t)[:, None]).clamp(-5, 5) + 5
        bias = self.bias(distance).permute(2, 0, 1)[None]
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        merged = attended.transpose(1, 2).reshape(attended.size()[:1] + (t, self.inner))  # noqa: RUF005 (the pattern under test)
        return self.o(torch.where(merged > -1e9, merged, 0.0))


def test_weights_read_transposed_interleaved_rotary_pairs_and_a_bias_per_head_follow_the_heads():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 24), _BiasedAttention(), nn.Linear(24, 3))
    x = torch.randn(2, 6, 8)
    result = sp.prune(
        model,
        {"heads": 1 / 3},
        criterion="magnitude",
        structured=True,
        example_inputs=x,
        scope="layer",
    )
    attention = model[1]
    assert attention.heads == 2 and attention.inner == 16
    assert attention.wq.shape == (16, 24) and attention.bias.embedding_dim == 2
    assert result.untouched == () and model(x).shape == (2, 6, 3)


def test_a_head_count_equal_to_the_head_width_is_told_apart_by_running_the_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), _RotaryAttention(width=16, heads=4), nn.Linear(16, 3))
    x = torch.randn(2, 6, 8)
    sp.prune(model, {"heads": 0.5}, criterion="magnitude", structured=True, example_inputs=x)
    attention = model[1]
    assert attention.heads == 2 and attention.head_dim == 4 and attention.q.out_features == 8
    assert model(x).shape == (2, 6, 3)


class _BatchFoldedAttention(nn.Module):
    """Heads folded into the batch for ``torch.bmm`` and unfolded to add a mask, as DeBERTa
    and BLOOM do."""

    def __init__(self, width: int = 24, heads: int = 3) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, width // heads
        self.qkv = nn.Linear(width, 3 * width)
        self.o = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = (
            y.view(b, t, self.heads, -1).transpose(1, 2).reshape(-1, t, self.head_dim)
            for y in self.qkv(x).chunk(3, -1)
        )
        scores = torch.bmm(q, k.transpose(1, 2)).view(b, self.heads, t, t) + mask
        probs = F.softmax(scores, -1).view(-1, t, t)
        out = torch.bmm(probs, v).view(b, self.heads, t, -1).transpose(1, 2)
        return self.o(out.reshape(b, t, -1))


def test_heads_folded_into_the_batch_are_followed_through_bmm():
    torch.manual_seed(0)
    model = nn.ModuleDict({"embed": nn.Linear(8, 24), "attention": _BatchFoldedAttention()})
    wrapper = _Wrapped(model)
    x, mask = torch.randn(2, 5, 8), torch.zeros(2, 1, 5, 5)
    sp.prune(
        wrapper, {"heads": 1 / 3}, criterion="magnitude", structured=True, example_inputs=(x, mask)
    )
    attention = model["attention"]
    assert attention.heads == 2 and attention.qkv.out_features == 48
    assert wrapper(x, mask).shape == (2, 5, 24)


class _Wrapped(nn.Module):
    def __init__(self, parts: nn.ModuleDict) -> None:
        super().__init__()
        self.parts = parts

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.parts["attention"](self.parts["embed"](x), mask)


class _ZeroBiasAttention(_RotaryAttention):
    """A bias made in forward for each of ``self.heads`` heads, the same for all (T5's
    cross-attention gives zeros so)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = (
            p(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
            for p in (self.q, self.k, self.v)
        )
        bias = torch.zeros(1, self.heads, t, t)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.o(out.transpose(1, 2).reshape(b, t, -1))


def test_a_mask_made_alike_for_every_head_follows_the_head_count():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 24), _ZeroBiasAttention(), nn.Linear(24, 3))
    x = torch.randn(2, 6, 8)
    sp.prune(model, {"heads": 1 / 3}, criterion="magnitude", structured=True, example_inputs=x)
    assert model[1].heads == 2 and model(x).shape == (2, 6, 3)


class _NormedQueryAttention(_RotaryAttention):
    """An RMSNorm written out (mean of squares over the channels) on the whole query and key
    projections before they are split into heads, as OLMo-2 does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape

        def rms(y: torch.Tensor) -> torch.Tensor:
            return y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + 1e-6)

        q, k, v = rms(self.q(x)), rms(self.k(x)), self.v(x)
        q, k, v = (y.view(b, t, self.heads, self.head_dim).transpose(1, 2) for y in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.o(out.transpose(1, 2).reshape(b, t, -1))


def test_a_norm_written_out_over_all_heads_is_cut_with_them():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 24), _NormedQueryAttention(), nn.Linear(24, 3))
    x = torch.randn(2, 6, 8)
    result = sp.prune(
        model, {"heads": 1 / 3}, criterion="magnitude", structured=True, example_inputs=x
    )
    assert model[1].heads == 2 and model[1].q.out_features == 16
    assert result.untouched == () and model(x).shape == (2, 6, 3)


class _MultiQueryAttention(nn.Module):
    """Query heads, then one key and one value head, in one projection, taken apart by
    counting from the end (``num_heads + 2`` planes), attention by ``sdpa`` or by matmuls."""

    def __init__(self, sdpa: bool, width: int = 16, heads: int = 4) -> None:
        super().__init__()
        self.sdpa, self.num_heads, self.head_dim = sdpa, heads, width // heads
        self.qkv = nn.Linear(width, (heads + 2) * self.head_dim)
        self.dense = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        qkv = self.qkv(x).view(b, t, self.num_heads + 2, self.head_dim)
        q, k, v = (y.transpose(1, 2) for y in (qkv[..., :-2, :], qkv[..., [-2], :],
                                                qkv[..., [-1], :]))  # fmt: skip
        if self.sdpa:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            out = F.softmax(q @ k.transpose(-1, -2) / self.head_dim**0.5, -1) @ v
        return self.dense(out.transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim))


@pytest.mark.parametrize("sdpa", [True, False])
def test_multi_query_attention_loses_query_heads_and_keeps_its_key_and_value(sdpa):
    torch.manual_seed(0)
    model, x = _Model(lambda: _MultiQueryAttention(sdpa), width=16), torch.randn(2, 5, 8)
    with torch.no_grad():
        for layer in model.layers:  # query head 1 is the weakest
            layer.qkv.weight[4:8] *= 1e-3
    expected = copy.deepcopy(model)
    with torch.no_grad():
        for layer in expected.layers:  # what removing query head 1 must give
            layer.qkv.weight[4:8] = 0
            layer.qkv.bias[4:8] = 0
            layer.dense.weight[:, 4:8] = 0
    result = sp.prune(
        model, {"heads": 0.25}, criterion="magnitude", structured=True, example_inputs=x
    )
    for layer in model.layers:
        assert layer.num_heads == 3 and layer.qkv.out_features == 5 * 4
        assert layer.dense.in_features == 12
    assert result.untouched == ()
    torch.testing.assert_close(model(x), expected(x), atol=1e-5, rtol=1e-4)


class _ChannelAttention(nn.Module):
    """XCiT's cross-covariance attention: each head attends across its channels (q and k
    are (…, heads, width, tokens)), scores scaled by a learned temperature per head, the
    head width computed from the input's (``C // self.num_heads``)."""

    def __init__(self, width: int = 24, heads: int = 3, sdpa: bool = False) -> None:
        super().__init__()
        self.num_heads, self.sdpa = heads, sdpa
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.temperature = nn.Parameter(torch.rand(heads, 1, 1) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 4, 1).unbind(0)
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        if self.sdpa:
            x = F.scaled_dot_product_attention(q * self.temperature, k, v, scale=1.0)
        else:
            x = ((q @ k.transpose(-2, -1)) * self.temperature).softmax(-1) @ v
        return self.proj(x.permute(0, 3, 1, 2).reshape(B, N, C))


@pytest.mark.parametrize("sdpa", [False, True])
def test_attention_across_channels_loses_whole_heads_and_their_temperatures(sdpa):
    torch.manual_seed(0)
    model = _Model(lambda: _ChannelAttention(sdpa=sdpa)).eval()
    x = torch.randn(2, 5, 8)
    result = sp.prune(model, 0.34, structured=True, example_inputs=x, scope="layer",
                      ignore=[model.head])  # fmt: skip
    assert model(x).shape == (2, 5, 3) and not result.untouched, result.untouched
    width = model.embed.out_features
    for layer in model.layers:
        assert layer.temperature.shape == (2, 1, 1) and layer.num_heads == 2
        assert layer.qkv.out_features == 3 * width == 3 * layer.proj.in_features == 3 * 2 * 8


class _TalkingHeads(nn.Module):
    """CaiT's talking-heads attention: the scores of the heads mixed by Linears over the
    heads before and after the softmax, the head width computed from the input's."""

    def __init__(self, width: int = 24, heads: int = 4) -> None:
        super().__init__()
        self.num_heads = heads
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.proj_l, self.proj_w = nn.Linear(heads, heads), nn.Linear(heads, heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attn = self.proj_l((q @ k.transpose(-2, -1)).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        attn = self.proj_w(attn.softmax(-1).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))


def test_talking_heads_lose_whole_heads_with_the_rows_and_columns_that_mix_them():
    torch.manual_seed(0)
    model, x = _Model(_TalkingHeads).eval(), torch.randn(2, 5, 8)
    result = sp.prune(model, 0.25, structured=True, example_inputs=x, scope="layer",
                      ignore=[model.head])  # fmt: skip
    assert model(x).shape == (2, 5, 3) and not result.untouched, result.untouched
    for layer in model.layers:
        assert layer.num_heads == 3 == layer.proj_l.in_features == layer.proj_w.out_features
        assert layer.qkv.out_features == 3 * model.embed.out_features == 3 * 3 * 6
