"""Models built from functional ops on their own parameters: each pattern that model
libraries use (timm's norm-act layers, weight-standardised convs, layer scales, class tokens,
shape asserts) prunes with no entry for its modules anywhere."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sensiprune as sp
from sensiprune.apply.cut import remove_groups
from sensiprune.criteria.scoring import group_scores
from sensiprune.selection.groups import choose_groups
from sensiprune.structure.graph import build_graph
from sensiprune.structure.zeroing import zeroed


class BatchNormAct(nn.BatchNorm2d):
    """A BatchNorm subclass that calls F.batch_norm itself and then an activation, as timm's
    BatchNormAct2d does; fx traces into it because it is not a torch.nn module."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch._assert(x.ndim == 4, "expected a 4-d input")
        x = F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias,
            self.training, self.momentum, self.eps,
        )  # fmt: skip
        return self.act(x)


class StdConv(nn.Conv2d):
    """Weight standardisation with a gain per output channel (timm's ScaledStdConv2d)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(cin, cout, 3, padding=1)
        self.gain = nn.Parameter(torch.rand(cout, 1, 1, 1) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = F.batch_norm(
            self.weight.reshape(1, self.out_channels, -1), None, None,
            weight=self.gain.view(-1), training=True, momentum=0.0, eps=1e-5,
        ).reshape_as(self.weight)  # fmt: skip
        return F.conv2d(x, weight, self.bias, self.stride, self.padding)


class OwnConv(nn.Module):
    """A convolution that is no nn.Conv2d: only its parameters and F.conv2d."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3) * 0.2)
        self.bias = nn.Parameter(torch.randn(cout) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, padding=1)


class LayerScale(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.rand(channels, 1, 1) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class FunctionalCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = StdConv(3, 16)
        self.bn1 = BatchNormAct(16)
        self.conv = OwnConv(16, 24)
        self.bn2 = BatchNormAct(24)
        self.scale = LayerScale(24)
        self.head = nn.Linear(24, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels = x.shape[0], x.shape[1]
        torch._assert(channels == 3, "three input channels")
        x = self.scale(self.bn2(self.conv(self.bn1(self.stem(x)))))
        return self.head(x.mean((2, 3)).reshape(batch, -1))


class TokenMixer(nn.Module):
    """A ViT-like stem and block: patches, a class token, position embeddings, LayerNorm,
    an MLP through x @ W, and a layer scale on the residual branch."""

    def __init__(self, dim: int = 32, hidden: int = 48) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, 4)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.1)
        self.pos_embed = nn.Parameter(torch.randn(1, 5, dim) * 0.1)
        self.norm = nn.LayerNorm(dim)
        self.w_in = nn.Parameter(torch.randn(dim, hidden) * 0.2)
        self.w_out = nn.Parameter(torch.randn(hidden, dim) * 0.2)
        self.ls = nn.Parameter(torch.rand(dim) + 0.5)
        self.head = nn.Linear(dim, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embed
        x = x + self.ls * (F.gelu(self.norm(x) @ self.w_in) @ self.w_out)
        return self.head(x[:, 0])


class RepeatedPositions(nn.Module):
    """XCiT's, GCViT's, MobileViT-v2's and LeViT's idioms: an encoding made once and tiled
    over the batch with ``repeat`` or ``repeat_interleave`` by a count computed in forward, a
    gate broadcast with ``expand_as``, and a branch put back in the residual's shape with
    ``reshape_as``."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 2, 2)
        self.pos, self.gate = nn.Conv2d(dim, dim, 1), nn.Conv2d(dim, dim, 1)
        self.mlp = nn.Sequential(nn.Linear(dim, 64), nn.GELU(), nn.Linear(64, dim))
        self.head = nn.Linear(dim, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x)
        pos = self.pos(x[:1])  # made from one image, for all of them
        x = (
            x
            + pos.repeat(x.shape[0], 1, 1, 1)
            + pos.repeat_interleave(x.shape[0] // pos.shape[0], 0)
        )
        x = x * self.gate(x.mean((2, 3), keepdim=True)).sigmoid().expand_as(x)
        tokens = x.flatten(2).transpose(1, 2)
        x = tokens + self.mlp(tokens).flatten(1).reshape_as(tokens)
        return self.head(x.mean(1))


def _prune(model: nn.Module, x: torch.Tensor, sparsity: float = 0.5) -> sp.PruneResult:
    return sp.prune(
        model, sparsity, structured=True, example_inputs=x, scope="layer",
        ignore=[model.head],
    )  # fmt: skip


@pytest.mark.parametrize(
    "make, size", [(FunctionalCNN, 8), (TokenMixer, 8), (RepeatedPositions, 8)]
)
def test_functional_models_prune_every_layer_and_keep_the_output_shape(make, size):
    torch.manual_seed(0)
    model, x = make().eval(), torch.randn(2, 3, size, size)
    expected = model(x).shape
    result = _prune(model, x)
    assert model(x).shape == expected
    assert result.flops_after < 0.6 * result.flops_before
    assert not result.untouched, result.untouched


def test_shape_reads_and_asserts_pin_nothing():
    model, x = FunctionalCNN().eval(), torch.randn(2, 3, 8, 8)
    graph = build_graph(model, [x])
    producers = {layer for g in graph.groups for layer in g.producers}
    assert producers == {"stem", "conv"}
    assert graph.untouched == {}


def test_a_weight_gain_and_a_layer_scale_are_cut_with_their_channels():
    torch.manual_seed(0)
    model, x = FunctionalCNN().eval(), torch.randn(2, 3, 8, 8)
    _prune(model, x)
    assert model.stem.gain.shape[0] == model.stem.weight.shape[0] == model.stem.out_channels
    assert model.bn1.num_features == model.stem.out_channels == model.conv.weight.shape[1]
    assert model.scale.gamma.shape[0] == model.conv.weight.shape[0] == model.bn2.num_features
    assert model.conv.bias.shape[0] == model.conv.weight.shape[0] < 24


def test_removing_zeroed_groups_of_functional_layers_changes_no_output():
    """A weight gain, a functional BatchNorm and a custom conv: zeroing what produces the
    chosen channels and cutting them out give the same output (TokenMixer is left out: its
    LayerNorm's statistics see the zeros)."""
    torch.manual_seed(0)
    model, x = FunctionalCNN().eval(), torch.randn(2, 3, 8, 8)
    for module in (model.bn1, model.bn2):
        module.running_mean.uniform_(-0.5, 0.5)
        module.running_var.uniform_(0.5, 1.5)
    graph = build_graph(model, [x])
    scores = {n: p.detach().abs() for n, p in model.named_parameters()}
    removed = choose_groups(graph.groups, group_scores(model, graph.groups, scores, "mean"),
                            0.5, "layer", "none", 0.01, 1)  # fmt: skip
    assert removed
    with torch.no_grad(), zeroed([graph.groups[g] for g in removed], dict(model.named_modules())):
        expected = model(x)
    with torch.no_grad():
        remove_groups(model, graph, removed, [x])
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


class SelectiveKernel(nn.Module):
    """Two convolution paths weighed per channel by a softmax over the paths, computed by a
    layer whose 2·C outputs are reshaped into (paths, C) (timm's SelectiveKernel)."""

    def __init__(self, channels: int = 16, paths: int = 2) -> None:
        super().__init__()
        self.paths = nn.ModuleList(
            nn.Conv2d(channels, channels, 3, padding=1) for _ in range(paths)
        )
        self.reduce = nn.Conv2d(channels, 8, 1)
        self.select = nn.Conv2d(8, channels * paths, 1)
        self.head = nn.Linear(channels, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.stack([path(x) for path in self.paths], dim=1)
        attn = self.select(torch.relu(self.reduce(x.sum(1).mean((2, 3), keepdim=True))))
        batch, channels, height, width = attn.shape
        attn = attn.view(batch, len(self.paths), channels // len(self.paths), height, width)
        x = torch.sum(x * torch.softmax(attn, dim=1), dim=1)
        return self.head(x.mean((2, 3)))


class Interleaved(nn.Module):
    """A reshape into (4, 2) read along both axes: no cut leaves a box, so those channels
    stay."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.rows, self.columns = nn.Linear(4, 5), nn.Linear(2, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x).mean((2, 3)).reshape(x.shape[0], 4, 2)
        return self.rows(y[:, :, 0]) + self.columns(y[:, 0, :])


def test_channels_split_over_paths_are_cut_across_every_path():
    torch.manual_seed(0)
    model, x = SelectiveKernel().eval(), torch.randn(2, 16, 8, 8)
    expected = model(x).shape
    graph = build_graph(model, [x])
    assert graph.untouched == {}
    rows = [
        sorted(m.index for m in g.members if (m.layer, m.role) == ("select", "out"))
        for g in graph.groups
    ]
    rows = [r for r in rows if r]
    # channel c of the paths goes with rows c and C + c of select
    assert len(rows) == 16 and all(r == [r[0], r[0] + 16] for r in rows)
    sp.prune(model, 0.5, structured=True, example_inputs=x, scope="layer", ignore=[model.head])
    assert model(x).shape == expected
    assert model.select.out_channels == 2 * model.paths[0].out_channels == 16


def test_a_split_that_cannot_be_cut_whole_is_left_alone():
    model, x = Interleaved().eval(), torch.randn(2, 3, 8, 8)
    graph = build_graph(model, [x])
    assert not any(m.layer == "conv" for g in graph.groups for m in g.members)
    assert any("split over dimensions" in why for why in graph.untouched.values())
