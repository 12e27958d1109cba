"""Sizes a model's code keeps in attributes (head counts, split sizes, a ``groups``
argument, a reshape's width) follow a structured cut; where they cannot, the prune starts
again with those channels kept, and the model always runs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sensiprune as sp
from sensiprune.structure.counts import held


class Attention(nn.Module):
    """timm's layout: fused qkv reshaped with stored head counts, scaled dot-product
    attention, and the heads merged back with a stored width."""

    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.attn_dim = heads, dim // heads, dim
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(batch, tokens, self.attn_dim))


class GroupedQuery(nn.Module):
    """Attention written out with matmuls, key/value heads shared by two query heads each,
    and the merged width read from the input's shape."""

    def __init__(self, dim: int = 32, heads: int = 4, kv_heads: int = 2) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, dim // heads
        self.q = nn.Linear(dim, dim)
        self.k, self.v = (nn.Linear(dim, kv_heads * self.head_dim) for _ in range(2))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape

        def split(t: torch.Tensor, heads: int) -> torch.Tensor:
            return t.view(batch, tokens, heads, self.head_dim).transpose(1, 2)

        q = split(self.q(x), self.heads)
        k, v = (
            split(p(x), self.kv_heads).repeat_interleave(self.heads // self.kv_heads, dim=1)
            for p in (self.k, self.v)
        )
        weights = (q @ k.transpose(-2, -1) * self.head_dim**-0.5).softmax(-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(batch, tokens, -1))


class CosineAttention(nn.Module):
    """Swin V2's: the head width computed from the input's (``C // self.num_heads``), cosine
    scores and a learned scale per head reshaped with the stored head count."""

    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.num_heads = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.logit_scale = nn.Parameter(torch.rand(heads, 1, 1) + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        qkv = self.qkv(x).view(batch, tokens, 3, self.num_heads, width // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        scores = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        scores = scores * self.logit_scale.reshape(1, self.num_heads, 1, 1)
        x = scores.softmax(-1) @ v
        return self.proj(x.transpose(1, 2).reshape(batch, tokens, -1))


class RelPosBias(nn.Module):
    """GCViT's relative position bias: a table per head read through a stored shape,
    ``view(self.bias_shape)`` with ``(tokens, tokens, heads)``, the head count kept nowhere
    else."""

    def __init__(self, tokens: int = 5, heads: int = 4) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(tokens * tokens, heads) * 0.1)
        self.bias_shape = (tokens, tokens, heads)

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        return scores + self.table.view(self.bias_shape).permute(2, 0, 1)


class BiasedAttention(Attention):
    def __init__(self) -> None:
        super().__init__()
        self.rel = RelPosBias()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        x = self.rel(q @ k.transpose(-2, -1)).softmax(-1) @ v
        return self.proj(x.transpose(1, 2).reshape(batch, tokens, self.attn_dim))


class Block(nn.Module):
    def __init__(self, attention: nn.Module) -> None:
        super().__init__()
        self.embed, self.norm, self.attn = nn.Linear(8, 32), nn.LayerNorm(32), attention
        self.fc1, self.fc2, self.head = nn.Linear(32, 64), nn.Linear(64, 32), nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        x = x + self.attn(self.norm(x))
        x = x + self.fc2(F.gelu(self.fc1(x)))
        return self.head(x.mean(1))


@pytest.mark.parametrize("attention", [Attention, GroupedQuery, CosineAttention, BiasedAttention])
def test_whole_heads_are_cut_and_the_head_counts_follow(attention):
    torch.manual_seed(0)
    model, x = Block(attention()).eval(), torch.randn(2, 5, 8)
    result = sp.prune(model, 0.5, structured=True, example_inputs=x, scope="layer",
                      ignore=[model.head])  # fmt: skip
    assert model(x).shape == (2, 3) and not result.untouched, result.untouched
    attn = model.attn
    heads = attn.heads if attention is GroupedQuery else attn.num_heads
    assert heads == 2
    if attention is BiasedAttention:
        assert attn.rel.bias_shape == (5, 5, 2) and attn.rel.table.shape == (25, 2)
    if attention in (Attention, BiasedAttention):
        assert attn.attn_dim == 2 * attn.head_dim == attn.proj.in_features
        assert attn.qkv.out_features == 3 * 2 * attn.head_dim
    elif attention is GroupedQuery:  # one key/value head left, with both of its query heads
        assert attn.kv_heads == 1 and attn.k.out_features == attn.head_dim
    else:  # the heads' widths follow the residual width
        assert attn.logit_scale.shape == (2, 1, 1)
        assert attn.qkv.out_features == 3 * model.embed.out_features == 3 * attn.proj.in_features


class MixedKernels(nn.Module):
    """Channels split into a stored list of sizes, one convolution per part (MixNet), and a
    blur whose ``groups`` is a stored channel count (tresnet's anti-aliasing)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 24, 3, padding=1)
        self.splits = [8, 16]
        self.convs = nn.ModuleList(nn.Conv2d(c, c, k, padding=k // 2, groups=c)
                                   for c, k in zip(self.splits, (3, 5)))  # fmt: skip
        self.channels = 24
        self.register_buffer("blur", torch.ones(24, 1, 3, 3) / 9)
        self.head = nn.Linear(24, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(self.stem(x), self.splits, dim=1)
        x = torch.cat([conv(p) for conv, p in zip(self.convs, parts)], dim=1)
        x = F.conv2d(x, self.blur, padding=1, groups=self.channels)
        return self.head(x.mean((2, 3)))


def test_split_sizes_and_groups_kept_in_attributes_follow_the_cut():
    torch.manual_seed(0)
    model, x = MixedKernels().eval(), torch.randn(2, 3, 8, 8)
    sp.prune(model, 0.5, structured=True, example_inputs=x, scope="layer", ignore=[model.head])
    assert model.splits == [c.out_channels for c in model.convs] and sum(model.splits) < 24
    assert model.channels == model.blur.shape[0] == model.stem.out_channels == sum(model.splits)
    assert model(x).shape == (2, 5)


class SplitPaths(nn.Module):
    """SKNet's input split: ``torch.split(x, self.in_channels // self.num_paths, 1)``, one
    convolution per path, the paths summed."""

    def __init__(self, channels: int = 8, paths: int = 2) -> None:
        super().__init__()
        self.in_channels, self.num_paths = channels, paths
        self.stem = nn.Conv2d(3, channels, 3, padding=1)
        self.paths = nn.ModuleList(
            nn.Conv2d(channels // paths, 6, 3, padding=1) for _ in range(paths)
        )
        self.head = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(self.stem(x), self.in_channels // self.num_paths, 1)
        x = sum(conv(part) for conv, part in zip(self.paths, parts))
        return self.head(x.mean((2, 3)))


def test_a_size_that_is_a_quotient_of_attributes_follows_through_its_dividend():
    torch.manual_seed(0)
    model, x = SplitPaths().eval(), torch.randn(2, 3, 8, 8)
    sp.prune(model, 0.5, structured=True, example_inputs=x, scope="layer", ignore=[model.head])
    assert model.num_paths == 2 and model.in_channels == model.stem.out_channels == 4
    assert all(conv.in_channels == 2 for conv in model.paths)
    assert model(x).shape == (2, 5)


class CascadedHeads(nn.Module):
    """EfficientViT-M's cascaded group attention: every head its own qkv layer, each split
    with the same ``[self.key_dim, self.key_dim, self.val_dim]``."""

    def __init__(self) -> None:
        super().__init__()
        self.key_dim, self.val_dim = 4, 6
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.qkvs = nn.ModuleList(nn.Conv2d(8, 2 * 4 + 6, 1) for _ in range(2))
        self.proj, self.head = nn.Conv2d(2 * 6, 8, 1), nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        batch, _, height, width = x.shape
        outs = []
        for qkv in self.qkvs:
            q, k, v = qkv(x).split([self.key_dim, self.key_dim, self.val_dim], dim=1)
            attn = (q.flatten(2).transpose(-2, -1) @ k.flatten(2)).softmax(-1)
            out = v.flatten(2) @ attn.transpose(-2, -1)
            outs.append(out.view(batch, self.val_dim, height, width))
        return self.head((x + self.proj(torch.cat(outs, 1))).mean((2, 3)))


def test_one_attribute_counting_parts_of_several_layers_keeps_them_equal():
    torch.manual_seed(0)
    model, x = CascadedHeads().eval(), torch.randn(2, 3, 4, 4)
    with torch.no_grad():  # the first head's keys matter least: alone, it would lose all 4
        model.qkvs[0].weight[:8] *= 0.01
    result = sp.prune(model, 0.5, structured=True, example_inputs=x, scope="layer",
                      ignore=[model.head])  # fmt: skip
    assert not result.untouched, result.untouched
    key, value = model.key_dim, model.val_dim
    assert key == 2  # what the two heads asked for (4 and 1 keys), on average, in both
    assert all(qkv.out_channels == 2 * key + value for qkv in model.qkvs)
    assert model.proj.in_channels == 2 * value and model(x).shape == (2, 5)


class HalfSplit(nn.Module):
    """A split size computed from an attribute (CSPNet's ``expand_chs // 2``): nothing holds
    the size itself, so the cut cannot follow it and those channels stay."""

    def __init__(self) -> None:
        super().__init__()
        self.expand_chs = 16
        self.conv = nn.Conv2d(3, 16, 1)
        self.left, self.right = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.conv(x).split(self.expand_chs // 2, dim=1)
        return self.head(torch.cat([self.left(a), self.right(b)], 1).mean((2, 3)))


def test_a_size_the_cut_cannot_follow_is_kept_and_the_rest_is_pruned():
    torch.manual_seed(0)
    model, x = HalfSplit().eval(), torch.randn(2, 3, 8, 8)
    result = sp.prune(model, 0.5, structured=True, example_inputs=x, scope="layer",
                      ignore=[model.head])  # fmt: skip
    assert model.conv.out_channels == 16 and model.left.out_channels == 4
    assert any("sizes fixed in the model's code" in item for item in result.untouched)
    assert model(x).shape == (2, 5)


class WidthFromInput(nn.Module):
    """``reshape(B, N, C)`` with C read from the input: the attention output must keep as
    many channels as the residual stream it is added to."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.inner = nn.Linear(8, 16), nn.Linear(16, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        batch, tokens, channels = x.shape
        y = self.inner(x).reshape(batch * tokens, channels).relu()
        return self.head((x + y.reshape(batch, tokens, channels)).mean(1))


def test_a_width_read_from_a_shape_keeps_both_sides_in_step():
    torch.manual_seed(0)
    model, x = WidthFromInput().eval(), torch.randn(2, 5, 8)
    sp.prune(model, 0.5, structured=True, example_inputs=x, scope="layer", ignore=[model.head])
    assert model.embed.out_features == model.inner.out_features == 8
    assert model(x).shape == (2, 3)


class GhostScaled(nn.Module):
    """Two halves concatenated and cut back to a stored width (GhostNet), a scale reshaped to
    a stored shape (PoolFormer), and a LayerNorm over (C, H, W) as a one-group GroupNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.primary, self.cheap = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.out_chs, self.shape = 12, (12, 1, 1)
        self.scale = nn.Parameter(torch.rand(12) + 0.5)
        self.norm = nn.GroupNorm(1, 12)
        self.head = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.primary(x)
        x = torch.cat([a, self.cheap(a)], dim=1)[:, : self.out_chs]
        x = self.norm(x) * self.scale.view(self.shape)
        return self.head(x.mean((2, 3)))


def test_a_stored_width_and_a_stored_shape_follow_the_cut():
    torch.manual_seed(0)
    model, x = GhostScaled().eval(), torch.randn(2, 3, 8, 8)
    result = sp.prune(model, 0.5, structured=True, example_inputs=x, scope="layer",
                      ignore=[model.head])  # fmt: skip
    # the channels past the stored width are dropped by the model: those copies stay
    assert model.primary.out_channels < 8 and model.cheap.out_channels == model.primary.out_channels
    assert model.out_chs == model.norm.num_channels == model.scale.shape[0] < 12
    assert model.shape == (model.out_chs, 1, 1)
    assert model(x).shape == (2, 5) and not any("fixed" in u for u in result.untouched)


@pytest.mark.parametrize("make", [GhostScaled, lambda: Block(Attention())])
def test_sizes_that_followed_the_cut_are_saved_and_loaded(make, tmp_path):
    torch.manual_seed(0)
    model = make().eval()
    x = torch.randn(2, 3, 8, 8) if isinstance(model, GhostScaled) else torch.randn(2, 5, 8)
    sp.prune(model, 0.5, structured=True, example_inputs=x, scope="layer")
    sp.save(model, tmp_path / "pruned")
    loaded = sp.load(tmp_path / "pruned", make).eval()
    torch.testing.assert_close(loaded(x), model(x))


def test_a_constant_made_from_attributes_is_held_only_as_the_code_can_compute_it():
    module = nn.Module()
    module.num_heads, module.head_dim = 4, 8
    assert held(module, (4,))
    assert held(module, (6,), unremovable=2)  # num_heads + 2: a key and a value after them
    assert not held(module, (6,), unremovable=1)
    assert held(module, (32,))  # num_heads * head_dim
    assert not held(module, (33,), unremovable=0)


class SplitByAttributes(nn.Module):
    """One projection split by sizes passed one attribute each (EfficientViT-M's
    ``split([self.key_dim, self.key_dim, self.val_dim])``)."""

    def __init__(self) -> None:
        super().__init__()
        self.key_dim, self.val_dim = 4, 6
        self.qkv, self.proj = nn.Conv2d(3, 14, 1), nn.Conv2d(6, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        q, k, v = self.qkv(x).flatten(2).split([self.key_dim, self.key_dim, self.val_dim], 1)
        attn = (q.transpose(-2, -1) @ k).softmax(-1)
        return self.proj((v @ attn.transpose(-2, -1)).view(b, self.val_dim, h, w))


def test_sizes_passed_one_attribute_each_follow_the_cut():
    torch.manual_seed(0)
    model, x = SplitByAttributes().eval(), torch.randn(2, 3, 4, 4)
    result = sp.prune(model, 0.5, structured=True, example_inputs=x, scope="layer",
                      ignore=[model.proj])  # fmt: skip
    assert model.qkv.out_channels == 2 * model.key_dim + model.val_dim < 14
    assert model.proj.in_channels == model.val_dim < 6
    assert result.untouched == () and model(x).shape == (2, 5, 4, 4)
