"""The prune / score / iterative_prune verbs, including bad input."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import sensiprune as sp


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_prune_reaches_sparsity_and_reports_it(mlp, mlp_batches):
    result = sp.prune(mlp, 0.8, criterion="taylor", data=mlp_batches)
    total = sum(t.numel() for n, t in mlp.named_parameters() if t.ndim >= 2)
    assert result.sparsity == pytest.approx(round(0.8 * total) / total)
    assert result.params_after == result.params_before - round(0.8 * total)
    zeros = sum(int((p == 0).sum()) for p in (mlp.fc1.weight, mlp.fc2.weight, mlp.head.weight))
    assert zeros >= round(0.8 * total)
    text = str(result)
    assert "taylor" in text and "fc1.weight" in text and "fewer" in text


def test_ignore_keeps_modules_dense(mlp, mlp_batches):
    result = sp.prune(mlp, 0.5, criterion="magnitude", ignore=[mlp.head, "fc1"])
    assert set(result.per_layer) == {"fc2.weight"}
    assert (mlp.head.weight != 0).all() and (mlp.fc1.weight != 0).all()


def test_random_criterion_is_deterministic_with_a_seed(mlp):
    a, b = copy.deepcopy(mlp), copy.deepcopy(mlp)
    sp.prune(a, 0.5, criterion="random", seed=7)
    sp.prune(b, 0.5, criterion="random", seed=7)
    assert _same(a.state_dict(), b.state_dict())


def test_rescoring_steps_reach_the_same_exact_sparsity(mlp, mlp_batches):
    one = sp.prune(copy.deepcopy(mlp), 0.9, criterion="obd", data=mlp_batches)
    stepped = sp.prune(mlp, 0.9, criterion="obd", data=mlp_batches, steps=5)
    assert stepped.sparsity == pytest.approx(one.sparsity)


def test_obs_in_steps_never_revives_a_pruned_weight(mlp, mlp_batches):
    sp.prune(mlp, 0.4, criterion="magnitude")
    before = sp.get_masks(mlp)
    sp.prune(mlp, 0.8, criterion="obs", data=mlp_batches, steps=2)
    for name, keep in sp.get_masks(mlp).items():
        assert not (keep & ~before[name]).any()
        assert (dict(mlp.named_parameters())[name][~keep] == 0).all()


def test_iterative_prune_fine_tunes_between_steps(mlp, mlp_batches):
    history = sp.iterative_prune(
        mlp, 0.75, mlp_batches, "taylor", steps=3, epochs_per_step=1, schedule="cubic"
    )
    sparsities = [result.sparsity for result, _ in history]
    assert sparsities == sorted(sparsities)
    assert sparsities[-1] == pytest.approx(0.75, abs=0.01)
    assert all(tuned.steps == len(mlp_batches) for _, tuned in history)


def test_prune_works_on_a_cnn_with_batchnorm(cnn, cnn_batches):
    for criterion in ("taylor", "activation", "obd"):
        model = copy.deepcopy(cnn)
        result = sp.prune(model, 0.6, criterion=criterion, data=cnn_batches)
        assert result.sparsity == pytest.approx(0.6, abs=0.01)
        assert model(cnn_batches[0][0]).shape == (8, 3)


def test_obs_on_a_cnn_with_an_ungrouped_conv(cnn, cnn_batches):
    result = sp.prune(cnn, 0.5, criterion="obs", data=cnn_batches, ignore=["conv2"])
    assert result.per_layer["conv1.weight"] > 0
    assert "conv2.weight" not in result.per_layer


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sparsity": 1.0}, r"\[0, 1\)"),
        ({"sparsity": -0.2}, r"\[0, 1\)"),
        ({"sparsity": 0.5, "criterion": "nope"}, "known criteria"),
        ({"sparsity": 0.5, "criterion": "taylor", "data": None}, "needs it"),
        ({"sparsity": 0.5, "criterion": "taylor", "data": []}, "no batches"),
        ({"sparsity": 0.5, "criterion": "taylor", "data": iter([])}, "no batches"),
        ({"sparsity": 0.5, "scope": "everywhere"}, "scope must be one of"),
        ({"sparsity": 0.5, "normalize": "zscore"}, "normalize must be one of"),
        ({"sparsity": 0.5, "steps": 0}, "steps must be a positive integer"),
        ({"sparsity": 0.5, "ignore": ["fc7"]}, "neither a module nor a parameter"),
        ({"sparsity": {"fc7": 0.5}}, "prunable layers are"),
        ({"sparsity": 0.5, "criterion": "activation", "data": 5}, "iterable of batches"),
        ({"sparsity": 0.3, "pattern": "2:4"}, "pass sparsity 0.5"),
        ({"sparsity": {"fc1": 0.5}, "pattern": "2:4"}, "pass sparsity 0.5"),
        ({"sparsity": 0.5, "pattern": "2:2"}, 'pattern must be "N:M"'),
        ({"sparsity": 0.5, "pattern": "half"}, 'pattern must be "N:M"'),
        ({"sparsity": 0.5, "pattern": "2:4", "steps": 2}, "steps=1"),
        ({"sparsity": 0.5, "pattern": "4:8"}, "groups of 8"),  # the head reads 12 inputs
    ],
)
def test_bad_input_is_refused_and_the_model_is_untouched(mlp, kwargs, message):
    before = _state(mlp)
    with pytest.raises(sp.SensipruneError, match=message):
        sp.prune(mlp, **kwargs)
    assert _same(before, mlp.state_dict())
    assert sp.get_masks(mlp) == {}


def test_nan_gradients_are_refused_and_the_model_is_untouched(mlp, mlp_batches):
    before = _state(mlp)

    def nan_grad_loss(model, batch):
        out = model(batch[0])  # sqrt at 0: a finite loss whose gradient is infinite
        return torch.nn.functional.cross_entropy(out, batch[1]) + (out - out.detach()).sqrt().sum()

    with pytest.raises(sp.SensipruneError, match="not finite"):
        sp.prune(mlp, 0.5, criterion="taylor", data=mlp_batches, loss_fn=nan_grad_loss)
    assert _same(before, mlp.state_dict())


def test_nan_loss_is_refused(mlp, mlp_batches):
    bad = [(torch.full_like(x, float("nan")), y) for x, y in mlp_batches]
    with pytest.raises(sp.SensipruneError, match="the loss is nan"):
        sp.prune(mlp, 0.5, criterion="obd", data=bad)


def test_a_model_with_nothing_prunable_is_refused():
    model = nn.Sequential(nn.LayerNorm(4))
    with pytest.raises(sp.SensipruneError, match="nothing prunable"):
        sp.prune(model, 0.5)


def test_criterion_that_cannot_read_a_layer_says_which(mlp_batches):
    model = nn.Sequential(nn.Linear(8, 4), nn.Bilinear(4, 4, 3))

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, x):
            h = self.inner[0](x)
            return self.inner[1](h, h)

    with pytest.raises(sp.SensipruneError, match=r"inputs of inner.1.weight \(Bilinear\)"):
        sp.prune(Wrap(), 0.5, criterion="activation", data=mlp_batches)


def test_loss_fn_for_any_batch_layout(mlp, mlp_batches):
    dict_batches = [{"x": x, "y": y} for x, y in mlp_batches]

    def loss_fn(model, batch):
        return torch.nn.functional.cross_entropy(model(batch["x"]), batch["y"])

    result = sp.prune(mlp, 0.5, criterion="taylor", data=dict_batches, loss_fn=loss_fn)
    assert result.sparsity == pytest.approx(0.5, abs=0.01)
    with pytest.raises(sp.SensipruneError, match="loss_fn"):
        sp.prune(mlp, 0.5, criterion="taylor", data=[(mlp_batches[0][0],)])


class _RecurrentClassifier(nn.Module):
    def __init__(self, cell: type[nn.RNNBase]) -> None:
        super().__init__()
        self.rnn = cell(8, 12, num_layers=2, batch_first=True, bidirectional=True)
        self.head = nn.Linear(24, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x.unsqueeze(1).expand(-1, 5, -1))
        return self.head(out[:, -1])


class _TransformerClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(2, 16)
        self.encoder = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x.view(x.shape[0], 4, 2))
        return self.head(self.encoder(tokens).mean(1))


@pytest.mark.parametrize(
    "make_model",
    [
        lambda: _RecurrentClassifier(nn.LSTM),
        lambda: _RecurrentClassifier(nn.GRU),
        _TransformerClassifier,
    ],
    ids=["lstm", "gru", "transformer"],
)
def test_recurrent_and_attention_weights_are_pruned_and_stay_zero(make_model, mlp_batches):
    torch.manual_seed(0)
    model = make_model()
    result = sp.prune(model, 0.7, criterion="taylor", data=mlp_batches)
    assert result.sparsity == pytest.approx(0.7, abs=0.01)
    names = set(result.per_layer)
    assert any("weight_hh" in n or "in_proj_weight" in n for n in names)
    sp.finetune(model, mlp_batches, epochs=2, show_progress=False)
    params = dict(model.named_parameters())
    for name, keep in sp.get_masks(model).items():
        assert (params[name][~keep] == 0).all(), name
    assert model(mlp_batches[0][0]).shape == (32, 3)


def _groups(weight: torch.Tensor, size: int) -> torch.Tensor:
    return weight.detach().reshape(weight.shape[0], -1, size)


@pytest.mark.parametrize("criterion", ["magnitude", "taylor", "activation"])
@pytest.mark.parametrize(("pattern", "zeros", "size"), [("2:4", 2, 4), ("1:4", 1, 4)])
def test_an_n_m_pattern_zeros_n_of_every_m_inputs_and_fine_tuning_keeps_it(
    mlp, mlp_batches, criterion, pattern, zeros, size
):
    result = sp.prune(mlp, zeros / size, criterion=criterion, data=mlp_batches, pattern=pattern)
    assert result.scope == f"{pattern} pattern"
    sp.finetune(mlp, mlp_batches, epochs=2, show_progress=False)
    for layer in (mlp.fc1, mlp.fc2, mlp.head):
        assert ((_groups(layer.weight, size) == 0).sum(-1) == zeros).all()


def test_obs_fills_an_n_m_pattern_with_less_output_error_than_magnitude(mlp, mlp_batches):
    dense, by_magnitude = copy.deepcopy(mlp), copy.deepcopy(mlp)
    sp.prune(by_magnitude, 0.5, pattern="2:4")
    result = sp.prune(mlp, 0.5, criterion="obs", data=mlp_batches, pattern="2:4")
    assert result.scope == "2:4 pattern"
    x = torch.cat([x for x, _ in mlp_batches])
    with torch.no_grad():
        error = {
            name: torch.nn.functional.mse_loss(model(x), dense(x)).item()
            for name, model in (("obs", mlp), ("magnitude", by_magnitude))
        }
    assert error["obs"] < error["magnitude"]
    sp.finetune(mlp, mlp_batches, epochs=1, show_progress=False)
    for layer in (mlp.fc1, mlp.fc2, mlp.head):
        assert ((_groups(layer.weight, 4) == 0).sum(-1) == 2).all()


def test_magnitude_n_m_drops_the_smallest_of_each_group(cnn):
    dense = copy.deepcopy(cnn)
    sp.prune(cnn, 0.5, pattern="3:6", ignore=["fc"])  # conv rows: inputs x kernel, 18 each
    for name in ("conv1", "conv2"):
        before = _groups(getattr(dense, name).weight, 6).abs()
        kept = _groups(getattr(cnn, name).weight, 6) != 0
        assert (kept.sum(-1) == 3).all()
        largest_dropped = before.masked_fill(kept, 0).amax(-1)
        smallest_kept = before.masked_fill(~kept, torch.inf).amin(-1)
        assert (largest_dropped <= smallest_kept).all()


def test_a_pattern_keeps_what_was_pruned_before(mlp):
    sp.prune(mlp, 0.9, scope="layer")  # 90% of fc1 zeroed first: many groups have 3 or 4
    before = (mlp.fc1.weight == 0).clone()
    sp.prune(mlp, 0.5, pattern="2:4")
    zeros = (_groups(mlp.fc1.weight, 4) == 0).sum(-1)
    assert (mlp.fc1.weight[before] == 0).all() and (zeros >= 2).all()
