"""Hand-written architectures for the structured-pruning tests: small but real topologies."""

from __future__ import annotations

import torch
from torch import nn


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    )


class VGG(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(3, 16), conv_bn(16, 16), nn.MaxPool2d(2), conv_bn(16, 32), nn.MaxPool2d(2)
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Dropout(0.1), nn.Linear(64, 5)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, cout: int) -> None:
        super().__init__()
        self.reduce = conv_bn(cin, width, 1)
        self.spatial = conv_bn(width, width, 3)
        self.expand = nn.Conv2d(width, cout, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.project = (
            nn.Identity()
            if cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn(self.expand(self.spatial(self.reduce(x))))
        return torch.relu(out + self.project(x))


class ResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16)
        self.layer1 = nn.Sequential(BasicBlock(16, 16), BasicBlock(16, 16))
        self.layer2 = nn.Sequential(BasicBlock(16, 32, stride=2), Bottleneck(32, 8, 32))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class DenseNet(nn.Module):
    def __init__(self, growth: int = 6) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.layers = nn.ModuleList(
            [
                nn.Sequential(
                    nn.BatchNorm2d(8 + i * growth),
                    nn.ReLU(),
                    nn.Conv2d(8 + i * growth, growth, 3, padding=1),
                )
                for i in range(3)
            ]
        )
        self.transition = nn.Sequential(
            nn.BatchNorm2d(8 + 3 * growth), nn.ReLU(), nn.Conv2d(8 + 3 * growth, 12, 1)
        )
        self.head = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for layer in self.layers:
            x = torch.cat([x, layer(x)], dim=1)
        x = self.transition(x)
        return self.head(x.mean(dim=(2, 3)))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, expand: int, stride: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_residual = stride == 1 and cin == cout
        self.block = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16)
        self.blocks = nn.Sequential(
            InvertedResidual(16, 16, 4, 1),
            InvertedResidual(16, 24, 4, 2),
            InvertedResidual(24, 24, 4, 1),
        )
        self.head = nn.Sequential(
            conv_bn(24, 48, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(48, 5)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


class UNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc1 = conv_bn(3, 8)
        self.enc2 = conv_bn(8, 16)
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.dec = conv_bn(16, 8)
        self.out = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(nn.functional.max_pool2d(e1, 2))
        return self.out(self.dec(torch.cat([self.up(e2), e1], dim=1)))


class SqueezeExcite(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = conv_bn(3, 16)
        self.fc1 = nn.Linear(16, 4)
        self.fc2 = nn.Linear(4, 16)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        gate = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3))))))
        x = x * gate.view(x.shape[0], -1, 1, 1)
        return self.head(x.mean((2, 3)))


class ChannelShuffle(nn.Module):
    """A shuffle moves channels between groups: the graph must pin, never corrupt, them."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = conv_bn(3, 8)
        self.conv2 = conv_bn(8, 8)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.head(self.conv2(x).mean((2, 3)))


class ResNeXt(nn.Module):
    """Grouped 3x3 convolutions (4 groups of 4, and a 2-per-channel multiplier) and a GroupNorm
    in a residual bottleneck: whole groups go, and every group keeps its width."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16)
        self.reduce = conv_bn(16, 16, k=1)
        self.grouped = conv_bn(16, 16, groups=4)
        self.norm = nn.GroupNorm(8, 16)  # groups of 2 channels, shared statistics
        self.expand = conv_bn(16, 16, k=1)
        self.multiplier = conv_bn(16, 32, groups=16)
        self.head = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.expand(self.norm(self.grouped(self.reduce(x))))
        return self.head(self.multiplier(x).mean((2, 3)))


class PartialResidual(nn.Module):
    """Channel slices at stored positions (ReXNet, DPN): the input added to the first
    ``in_channels`` of a wider output, the rest concatenated after it, then split again."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 8)
        self.expand = conv_bn(8, 12)
        self.in_channels, self.split_at = 8, 6
        self.left, self.right = nn.Conv2d(6, 4, 1), nn.Conv2d(6, 4, 1)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.expand(x)
        y = torch.cat([y[:, 0 : self.in_channels] + x, y[:, self.in_channels :]], dim=1)
        a, b = self.left(y[:, : self.split_at]), self.right(y[:, self.split_at :])
        return self.head(torch.cat([a, b], dim=1).mean((2, 3)))


class MLPMixer(nn.Module):
    """Token mixing by Linears over the tokens, which every channel passes through alike,
    after ResMLP's per-channel affine ``addcmul(beta, alpha, x)``."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.alpha, self.beta = nn.Parameter(torch.rand(8) + 0.5), nn.Parameter(torch.randn(8))
        # without biases, a zeroed channel stays zero through the token mixing, as the
        # test that zeroing equals removing needs
        self.tokens = nn.Sequential(nn.Linear(6, 12, bias=False), nn.GELU(),
                                    nn.Linear(12, 6, bias=False))  # fmt: skip
        self.channels = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        mixed = self.tokens(torch.addcmul(self.beta, self.alpha, x).transpose(1, 2))
        x = x + mixed.transpose(1, 2)
        return self.head((x + self.channels(x)).mean(1))


class ChannelAttention(nn.Module):
    """Single-head attention between the positions of a feature map (EfficientViT-M's
    cascaded heads): ``q.T @ k`` sums over the query/key channels, ``v @ attn.T`` keeps the
    value channels."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 8)
        self.q, self.k, self.v = nn.Conv2d(8, 4, 1), nn.Conv2d(8, 4, 1), nn.Conv2d(8, 6, 1)
        self.proj = nn.Conv2d(6, 8, 1)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        b, _, h, w = x.shape
        q, k, v = (layer(x).flatten(2) for layer in (self.q, self.k, self.v))
        attn = (q.transpose(-2, -1) @ k).softmax(-1)
        x = x + self.proj((v @ attn.transpose(-2, -1)).view(b, -1, h, w))
        return self.head(x.mean((2, 3)))


class GatedSlices(nn.Module):
    """Gates taken one channel at a time and broadcast over a feature map (FocalNet's
    ``gates[:, l:l + 1]`` and ``gates[:, self.focal_level:]``): each gate keeps its channel."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 8)
        self.f = nn.Conv2d(8, 10, 1)
        self.input_split, self.focal_level = [8, 2], 1
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ctx, gates = torch.split(self.f(self.stem(x)), self.input_split, 1)
        out = ctx * gates[:, 0:1] + ctx.mean((2, 3), keepdim=True) * gates[:, self.focal_level :]
        return self.head(out.mean((2, 3)))


class ComputedHeadDim(nn.Module):
    """Attention written as in much user code (DeiT, CaiT, CrossViT): the head size is
    computed from the residual width, ``C // num_heads``, and the heads are put back with
    ``reshape(B, N, C)``. No norm on the residual, so that zeroing a channel equals removing
    it (the equivalence test)."""

    def __init__(self, dim: int = 16, heads: int = 4) -> None:
        super().__init__()
        self.num_heads = heads
        self.embed = nn.Linear(3, dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attended = nn.functional.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(attended.transpose(1, 2).reshape(B, N, C))
        return self.head((x + self.mlp(x)).mean(1))


class _AlibiAttention(nn.Module):
    """One block's attention with a bias per head that it is handed: heads folded into the
    batch and ``bias.baddbmm(q, k)`` (BLOOM), or the bias cut to the tokens and added to the
    scores (MPT)."""

    def __init__(self, dim: int, heads: int, folded: bool) -> None:
        super().__init__()
        self.heads, self.head_dim, self.folded = heads, dim // heads, folded
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        if self.folded:
            q, k, v = (t.reshape(B * self.heads, N, -1) for t in (q, k, v))
            scores = bias.baddbmm(q, k.transpose(1, 2), alpha=0.5)
            out = scores.softmax(-1).bmm(v).view(B, self.heads, N, -1)
        else:
            scores = q @ k.transpose(-1, -2) + bias[:, -N:, -N:]
            out = scores.softmax(-1) @ v
        return self.proj(out.transpose(1, 2).reshape(B, N, -1))


class AlibiTransformer(nn.Module):
    """Attention biased per head by ALiBi slopes the model makes once from its head count and
    hands to every block (BLOOM, MPT), written from standard ops only."""

    def __init__(self, dim: int = 16, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.embed = nn.Linear(3, dim)
        self.blocks = nn.ModuleList(_AlibiAttention(dim, heads, folded) for folded in (1, 0))
        self.head = nn.Linear(dim, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        B, N, _ = x.shape
        slopes = 2.0 ** -torch.arange(1, self.heads + 1, dtype=x.dtype)
        distance = torch.arange(N, dtype=x.dtype)
        per_head = slopes[:, None, None] * (distance[None, :] - distance[:, None])  # (H, N, N)
        folded = per_head[None].expand(B, -1, -1, -1).reshape(B * self.heads, N, N)
        for block, bias in zip(self.blocks, (folded, per_head)):
            x = x + block(x, bias)
        return self.head(x.mean(1))


class HeadSplitBias(nn.Module):
    """DeBERTa's attention: a bias vector added to the queries after they were split into
    heads, itself viewed as (1, 1, heads, head_dim) and permuted as they were."""

    def __init__(self, dim: int = 16, heads: int = 4) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.embed = nn.Linear(3, dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.randn(dim))
        self.proj, self.head = nn.Linear(dim, dim), nn.Linear(dim, 5)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(*x.shape[:-1], self.heads, -1).permute(0, 2, 1, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        B, N, _ = x.shape
        q, k, v = self.split(self.qkv(x)).chunk(3, dim=-1)  # each head's q, k, v side by side
        q = q + self.split(self.q_bias[None, None, :])
        attended = (q @ k.transpose(-1, -2)).softmax(-1) @ v
        x = x + self.proj(attended.transpose(1, 2).reshape(B, N, -1))
        return self.head(x.mean(1))


class LSTMClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(3, 8)
        self.lstm = nn.LSTM(8, 16, batch_first=True)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, (h, _) = self.lstm(torch.relu(self.embed(x)))
        return self.head(h[-1])


class BiGRUClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(3, 12, num_layers=2, bidirectional=True, batch_first=True)
        self.head = nn.Linear(24, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(x)
        return self.head(out[:, -1])


class TransformerClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(3, 16)
        layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(x)).mean(1))


class StyleNet(nn.Module):
    """An image-to-image net as style transfer writes it: InstanceNorm, with and without
    affine weights and running statistics, and a PReLU slope per channel."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.norm1 = nn.InstanceNorm2d(8, affine=True, track_running_stats=True)
        self.act1 = nn.PReLU(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.norm2 = nn.InstanceNorm2d(8)
        self.out = nn.Conv2d(8, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.norm1(self.conv1(x)))
        return self.out(torch.relu(self.norm2(self.conv2(x))))


IMAGE = (4, 3, 8, 8)
SEQUENCE = (4, 6, 3)
ZOO = {
    "vgg": (VGG, (4, 3, 16, 16)),
    "resnet": (ResNet, IMAGE),
    "densenet": (DenseNet, IMAGE),
    "mobilenetv2": (MobileNetV2, IMAGE),
    "unet": (UNet, IMAGE),
    "instance-norm-prelu": (StyleNet, IMAGE),
    "squeeze-excite": (SqueezeExcite, IMAGE),
    "channel-shuffle": (ChannelShuffle, IMAGE),
    "resnext-grouped": (ResNeXt, IMAGE),
    "partial-residual": (PartialResidual, IMAGE),
    "mlp-mixer": (MLPMixer, (4, 6, 4)),
    "channel-attention": (ChannelAttention, IMAGE),
    "gated-slices": (GatedSlices, IMAGE),
    "computed-head-dim": (ComputedHeadDim, SEQUENCE),
    "alibi-transformer": (AlibiTransformer, SEQUENCE),
    "head-split-bias": (HeadSplitBias, SEQUENCE),
    "lstm": (LSTMClassifier, SEQUENCE),
    "bigru-2-layer": (BiGRUClassifier, SEQUENCE),
    "transformer": (TransformerClassifier, SEQUENCE),
}
