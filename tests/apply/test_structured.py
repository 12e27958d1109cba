"""Structured pruning end to end on a zoo of architectures, and exact equivalence."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import sensiprune as sp
from sensiprune.apply.cut import remove_groups
from sensiprune.criteria.scoring import group_scores
from sensiprune.handlers.base import positions
from sensiprune.handlers.layouts import layout_for
from sensiprune.measure import module_flops
from sensiprune.selection.groups import choose_groups, vector_width
from sensiprune.selection.ties import honor
from sensiprune.structure.graph import build_graph
from sensiprune.structure.zeroing import zeroed
from tests.architectures import VGG, ZOO, ChannelShuffle, ResNet


def _make(name: str) -> tuple[nn.Module, torch.Tensor]:
    factory, shape = ZOO[name]
    torch.manual_seed(0)
    return factory(), torch.randn(*shape)


def _batches(model: nn.Module, x: torch.Tensor) -> list:
    with torch.no_grad():
        out = model(x)
    labels = torch.randint(0, out.shape[1], (x.shape[0], *out.shape[2:]))
    return [(x, labels)]


@pytest.mark.parametrize("name", [n for n in ZOO if n != "channel-shuffle"])
@pytest.mark.parametrize("sparsity", [0.3, 0.7])
def test_every_architecture_shrinks_runs_and_trains(name, sparsity):
    model, x = _make(name)
    shape = model(x).shape
    flops_before = module_flops(model, x)[0]  # torch's FlopCounterMode
    result = sp.prune(
        model,
        sparsity,
        criterion="taylor",
        data=_batches(model, x),
        structured=True,
        example_inputs=x,
        scope="layer",
    )
    assert model(x).shape == shape
    assert result.params_after < result.params_before
    assert (result.flops_before, result.flops_after) == (flops_before, module_flops(model, x)[0])
    assert result.flops_after < result.flops_before
    sp.finetune(model, _batches(model, x), epochs=1, show_progress=False)
    assert torch.isfinite(model(x)).all()


def test_pruned_flops_are_counted_from_layer_shapes_only_when_nothing_else_has_flops():
    model, x = _make("resnet")
    assert build_graph(model, [x]).flops_in_layers_only  # all FLOPs in Conv and Linear layers
    model, x = _make("transformer")  # attention's matrix products run outside such layers
    graph = build_graph(model, [x])
    assert not graph.flops_in_layers_only
    assert graph.flops == module_flops(model, x)[0]


@pytest.mark.parametrize("name", list(ZOO))
def test_removing_groups_that_were_zeroed_leaves_outputs_unchanged(name):
    model, x = _make(name)
    model.eval()
    for module in model.modules():  # non-trivial running statistics
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 1.5)
    graph = build_graph(model, [x])
    scores = {n: p.detach().abs() for n, p in model.named_parameters()}
    values = group_scores(model, graph.groups, scores, "mean")
    removed = choose_groups(graph.groups, values, 0.5, "layer", "none", 0.01, 1)
    removed = honor([g.number for g in graph.groups], values, removed, graph.ties, 0.01)
    assert removed or name == "channel-shuffle"
    modules = dict(model.named_modules())
    state = copy.deepcopy(model.state_dict())
    with torch.no_grad(), zeroed([graph.groups[g] for g in removed], modules):
        through_zeroed = model(x)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())  # restored
    with torch.no_grad():  # zero everything that produces the removed channels / units
        for g in removed:
            for member in graph.groups[g].members:
                module = modules[member.layer]
                if member.role == "in":
                    continue
                layout = layout_for(module, member.role)
                for cut in layout.cuts(module):
                    tensor = getattr(module, cut.attr, None)
                    if tensor is not None:
                        where = positions(cut, torch.tensor([member.index]), layout.size(module))
                        tensor.index_fill_(cut.dim, where, 0.0)
        expected = model(x)
        torch.testing.assert_close(through_zeroed, expected)
        remove_groups(model, graph, removed, [x])
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


def test_residual_branches_are_pruned_together():
    model = ResNet()
    graph = build_graph(model, [torch.randn(2, 3, 8, 8)])
    families = {frozenset(g.producers) for g in graph.groups}
    # the stem and both layer1 blocks write into one residual stream: one family
    assert frozenset({"stem.0", "layer1.0.conv2", "layer1.1.conv2"}) in families
    assert frozenset({"layer1.0.conv1"}) in families


def test_flatten_into_linear_removes_every_spatial_column():
    model = VGG()
    x = torch.randn(2, 3, 16, 16)
    sp.prune(model, 0.5, criterion="magnitude", structured=True, example_inputs=x, scope="layer")
    assert model.features[3][0].out_channels == 16
    assert model.classifier[1].in_features == 16 * 16


def test_channel_shuffle_is_left_alone_and_reported():
    model = ChannelShuffle()
    x = torch.randn(2, 3, 8, 8)
    result = sp.prune(
        model, 0.5, criterion="magnitude", structured=True, example_inputs=x, scope="layer"
    )
    assert model.conv1[0].out_channels == 8  # shuffled channels: untouched
    assert model.conv2[0].out_channels == 4  # after the shuffle: free to prune
    assert any("could not be cut as a whole" in item for item in result.untouched)


def test_ignore_keeps_a_layers_outputs(mlp):
    x = torch.randn(4, 8)
    sp.prune(mlp, 0.5, criterion="magnitude", structured=True, example_inputs=x, ignore=[mlp.fc1])
    assert mlp.fc1.out_features == 16
    assert mlp.fc2.out_features == 6


@pytest.mark.parametrize("round_to", [8, "auto"])
def test_round_to_keeps_multiples(round_to):
    model = VGG()
    x = torch.randn(2, 3, 16, 16)
    multiple = 8 if round_to == 8 else vector_width(model)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    widths = [conv.out_channels for conv in convs]
    sp.prune(
        model,
        0.3,
        criterion="magnitude",
        structured=True,
        example_inputs=x,
        round_to=round_to,
        scope="layer",
    )
    for conv, width in zip(convs, widths, strict=True):  # narrower than one multiple: kept
        assert conv.out_channels % multiple == 0 or conv.out_channels == width < multiple


def test_round_to_rounds_the_kept_count_up_never_down(mlp):
    """5 of fc1's 16 outputs asked: 8 kept with round_to=4 (the vector's time is paid
    anyway), where rounding to the nearest multiple would keep 4."""
    sp.prune(mlp, {"fc1": 11 / 16}, criterion="magnitude", structured=True,
             example_inputs=torch.randn(4, 8), round_to=4)  # fmt: skip
    assert mlp.fc1.out_features == 8


def test_auto_rounding_fills_one_vector_of_the_models_dtype():
    model = VGG()
    width = vector_width(model)
    assert width in (4, 8, 16)  # 128-, 256- or 512-bit vectors of fp32
    assert vector_width(model.to(torch.bfloat16)) == 2 * width


def test_structured_model_saves_and_loads_by_shape(tmp_path):
    torch.manual_seed(0)
    model = ResNet().eval()
    x = torch.randn(2, 3, 8, 8)
    sp.prune(model, 0.5, criterion="magnitude", structured=True, example_inputs=x)
    sp.save(model, tmp_path / "run")
    loaded = sp.load(tmp_path / "run", ResNet).eval()
    torch.testing.assert_close(loaded(x), model(x))


class _Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # through NumPy: neither torch.fx nor tracing on the example inputs can follow it
        return self.fc(torch.as_tensor(np.asarray(x)))


@pytest.mark.parametrize(
    ("make", "kwargs", "message"),
    [
        (VGG, {"sparsity": 1.0}, r"\[0, 1\)"),
        (VGG, {"sparsity": 0.5, "ignore": ["nowhere"]}, "neither a module nor a parameter"),
        (VGG, {"sparsity": 0.5, "example_inputs": None}, "needs example_inputs"),
        (VGG, {"sparsity": 0.5, "round_to": 0}, "round_to"),
        (VGG, {"sparsity": 0.5, "round_to": "fast"}, "round_to"),
        (VGG, {"sparsity": 0.5, "scope": "row"}, "scope"),
        (_Untraceable, {"sparsity": 0.5}, "failed symbolically"),
    ],
)
def test_bad_structured_input_leaves_the_model_unmodified(make, kwargs, message):
    model = make()
    x = torch.randn(2, 3, 16, 16) if make is VGG else torch.randn(2, 4)
    before = copy.deepcopy(model.state_dict())
    args = {"criterion": "magnitude", "structured": True, "example_inputs": x, **kwargs}
    with pytest.raises(sp.SensipruneError, match=message):
        sp.prune(model, **args)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def _feature_map_taylor_by_hand(model, batches, layer):
    module = dict(model.named_modules())[layer]
    captured = {}
    handle = module.register_forward_hook(lambda m, a, out: captured.update(out=out))
    total, samples = 0, 0
    for x, y in batches:
        loss = nn.functional.cross_entropy(model(x), y)
        out = captured["out"]
        (grad,) = torch.autograd.grad(loss, out)
        total = total + (out * grad).detach().sum((2, 3)).abs().sum(0)
        samples += x.shape[0]
    handle.remove()
    return total / samples


def test_feature_map_taylor_matches_a_hand_computation():
    model, x = _make("vgg")
    model.eval()
    batches = _batches(model, x) * 2
    scores = sp.score(model, "taylor_fm", batches)
    expected = _feature_map_taylor_by_hand(model, batches, "features.0.0")
    torch.testing.assert_close(scores["features.0.0::out"], expected.float(), rtol=1e-4, atol=1e-7)


def test_channel_criteria_prune_structured_only():
    model, x = _make("resnet")
    batches = _batches(model, x)
    for criterion in ("taylor_fm", "bn_scale"):
        pruned = copy.deepcopy(model)
        result = sp.prune(
            pruned, 0.5, criterion=criterion, data=batches, structured=True, example_inputs=x
        )
        assert result.flops_after < result.flops_before
        with pytest.raises(sp.SensipruneError, match="pass structured=True"):
            sp.prune(copy.deepcopy(model), 0.5, criterion=criterion, data=batches)


def test_bn_scale_removes_the_channels_with_the_smallest_scale():
    model, x = _make("vgg")
    with torch.no_grad():
        model.features[0][1].weight.copy_(torch.arange(1.0, 17.0))
    sp.prune(model, 0.25, criterion="bn_scale", structured=True, example_inputs=x, scope="layer")
    assert model.features[0][1].weight.tolist() == list(map(float, range(5, 17)))


def test_group_loss_is_the_measured_change_of_zeroing_a_group():
    from sensiprune.criteria import get

    model, x = _make("resnet")
    model.eval()
    batches = _batches(model, x)
    graph = build_graph(model, [x])
    measured = get("group_loss").score_groups(model, graph.groups, batches, sp.data.default_loss)
    state = copy.deepcopy(model.state_dict())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())  # restored
    group = graph.groups[3]
    with torch.no_grad():
        base = nn.functional.cross_entropy(model(x), batches[0][1]).item()
        modules = dict(model.named_modules())
        for member in group.members:
            if member.role == "in":
                continue
            layout = layout_for(modules[member.layer], member.role)
            for cut in layout.cuts(modules[member.layer]):
                tensor = getattr(modules[member.layer], cut.attr, None)
                if tensor is not None:
                    where = positions(
                        cut, torch.tensor([member.index]), layout.size(modules[member.layer])
                    )
                    tensor.index_fill_(cut.dim, where, 0.0)
        zeroed = nn.functional.cross_entropy(model(x), batches[0][1]).item()
    assert measured[3].item() == pytest.approx(abs(zeroed - base), rel=1e-5, abs=1e-7)


def test_group_loss_prunes_structured():
    model, x = _make("vgg")
    result = sp.prune(
        model,
        0.5,
        criterion="group_loss",
        data=_batches(model, x),
        structured=True,
        example_inputs=x,
    )
    assert result.flops_after < result.flops_before
    with pytest.raises(sp.SensipruneError, match="no batches"):
        sp.prune(model, 0.5, criterion="group_loss", data=[], structured=True, example_inputs=x)


@pytest.mark.parametrize("name", ["transformer", "alibi-transformer", "lstm", "bigru-2-layer"])
def test_pruned_heads_and_hidden_units_save_and_load(name, tmp_path):
    model, x = _make(name)
    sp.prune(model, 0.5, criterion="magnitude", structured=True, example_inputs=x, scope="layer")
    model.eval()
    sp.save(model, tmp_path / "run")
    loaded = sp.load(tmp_path / "run", ZOO[name][0]).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_head_pruned_attention_matches_multihead_attention_with_every_mask():
    from sensiprune.handlers.attention import become_head_pruned

    torch.manual_seed(0)
    reference = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    pruned = copy.deepcopy(reference)
    become_head_pruned(pruned, [0, 1, 2, 3])
    q, kv = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    attn_mask = torch.rand(5, 7) > 0.7
    attn_mask[:, 0] = False
    padding = torch.zeros(2, 7, dtype=torch.bool)
    padding[1, 5:] = True
    per_head = torch.randn(2 * 4, 5, 7)
    for kwargs in (
        {},
        {"attn_mask": attn_mask},
        {"key_padding_mask": padding, "average_attn_weights": False},
        {"attn_mask": per_head},
    ):
        expected, expected_weights = reference(q, kv, kv, **kwargs)
        out, weights = pruned(q, kv, kv, **kwargs)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(weights, expected_weights, rtol=1e-5, atol=1e-6)


def test_transformer_heads_are_removed_whole():
    model, x = _make("transformer")
    sp.prune(model, 0.5, criterion="magnitude", structured=True, example_inputs=x, scope="layer")
    attention = model.encoder.layers[0].self_attn
    assert attention.num_heads == 2 and len(attention.kept_heads) == 2
    assert attention.in_proj_weight.shape == (3 * 2 * 4, 16)
    assert attention.out_proj.in_features == 8


class _DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) if x.sum() > 0 else -self.fc(x)


class _ThroughNumpy(nn.Module):
    """Calls into NumPy: no tracer can record that."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.tanh(self.fc(x).detach().numpy()))


class _PartlyTraceable(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.a = nn.Linear(4, 16)
        self.c = nn.Linear(16, 8)
        self.inner = nn.Sequential(inner)
        self.b = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.inner(self.c(torch.relu(self.a(x)))))


def test_an_untraceable_submodule_is_left_alone_and_the_rest_is_pruned():
    torch.manual_seed(0)
    model = _PartlyTraceable(_ThroughNumpy())
    x = torch.randn(5, 4)
    expected_shape = model(x).shape
    result = sp.prune(
        model, 0.5, criterion="magnitude", structured=True, example_inputs=x, scope="layer"
    )
    assert model.a.out_features == 8 and model.c.in_features == 8
    assert model.inner[0].fc.weight.shape == (8, 8)
    assert any(item.startswith("inner.0: could not be traced") for item in result.untouched)
    assert model(x).shape == expected_shape


def test_a_submodule_that_branches_on_values_is_traced_on_the_example_inputs():
    torch.manual_seed(0)
    model = _PartlyTraceable(_DataDependent())
    x = torch.randn(5, 4)
    expected_shape = model(x).shape
    result = sp.prune(
        model, 0.5, criterion="magnitude", structured=True, example_inputs=x, scope="layer"
    )
    assert model.inner[0].fc.weight.shape == (4, 4)
    assert not any("could not be traced" in item for item in result.untouched)
    assert model(x).shape == expected_shape


class _TokenClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.lstm = nn.LSTM(8, 12, batch_first=True)
        self.head = nn.Linear(12, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embed(ids))
        return self.head(out[:, -1])


def test_embedding_dims_are_pruned_only_when_a_budget_names_them(tmp_path):
    torch.manual_seed(0)
    ids = torch.randint(0, 20, (4, 6))
    model = _TokenClassifier()
    sp.prune(model, 0.5, criterion="magnitude", structured=True, example_inputs=ids, scope="layer")
    assert model.embed.embedding_dim == 8 and model.lstm.hidden_size == 6
    sp.prune(model, {"embed": 0.5}, criterion="magnitude", structured=True, example_inputs=ids)
    assert model.embed.weight.shape == (20, 4) and model.lstm.input_size == 4
    model.eval()
    sp.save(model, tmp_path / "run")
    loaded = sp.load(tmp_path / "run", _TokenClassifier).eval()
    torch.testing.assert_close(loaded(ids), model(ids))


def test_structured_steps_reach_the_target_with_rescoring_in_between():
    model, x = _make("vgg")
    batches = _batches(model, x)
    result = sp.prune(
        model,
        0.75,
        criterion="taylor",
        data=batches,
        structured=True,
        example_inputs=x,
        scope="layer",
        steps=2,
    )
    assert model.features[0][0].out_channels == 4  # 16 -> 8 -> 4: half of what is left, twice
    assert result.params_before > result.params_after
    assert "2 steps" in str(result)
    before = {layer.name: layer.numel for layer in result.layers}
    assert before["features.0.0.weight"] == 16 * 3 * 9


def test_an_input_statistics_criterion_skips_layers_it_cannot_read():
    model, x = _make("lstm")
    batches = _batches(model, x)
    result = sp.prune(
        model,
        0.5,
        criterion="activation",
        data=batches,
        structured=True,
        example_inputs=x,
        scope="layer",
    )
    # the LSTM's own weights get no activation scores; its hidden units are still ranked by
    # the head columns that read them, and the Linear layers by their own weights
    assert model.embed.out_features == 4 and model.lstm.hidden_size == 8
    assert result.flops_after < result.flops_before


class _SqueezeHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = nn.functional.adaptive_avg_pool2d(self.conv(x), 1).squeeze(-1).squeeze(-1)
        return self.fc(torch.unsqueeze(pooled, 1).squeeze(1))


def test_squeeze_and_unsqueeze_keep_the_channels_tracked():
    model, x = _SqueezeHead(), torch.randn(2, 3, 8, 8)
    sp.prune(model, 0.5, criterion="magnitude", structured=True, example_inputs=x, scope="layer")
    assert model.conv[0].out_channels == 8 and model.fc.in_features == 8


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_a_shrunk_model_compiles_and_gives_the_eager_output(backend):
    torch.manual_seed(0)
    model = ResNet().eval()
    x = torch.randn(4, 3, 16, 16)
    sp.prune(model, 0.5, structured=True, example_inputs=x)
    with torch.no_grad():
        assert torch.allclose(torch.compile(model, backend=backend)(x), model(x), atol=1e-5)
