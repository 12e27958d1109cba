"""sp.export_sparse swaps the Linears a sparse kernel runs faster, keeps the rest dense and
the outputs the masked model's, says why for every layer, and refuses bad settings."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sensiprune as sp
from sensiprune.apply.sparse_kernels import SparseLinear

ALWAYS = 1e-9  # a min_speedup every kernel passes: what is tested is the swap, not the clock


def _pruned_mlp(sparsity: float = 0.9) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10)
    )
    sp.prune(model, sparsity, criterion="magnitude", scope="layer", min_density=0)
    return model


def test_sparse_layers_give_the_masked_models_outputs_and_the_model_is_unchanged():
    model = _pruned_mlp()
    x = torch.randn(8, 32)
    result = sp.export_sparse(model, x, min_speedup=ALWAYS, rounds=1)
    assert len(result.swapped) == 3
    assert all(isinstance(m, SparseLinear) for m in result.model if not isinstance(m, nn.ReLU))
    torch.testing.assert_close(result.model(x), model(x), rtol=1e-5, atol=1e-5)
    assert result.max_difference < 1e-5
    assert all(type(m) is not SparseLinear for m in model)  # the original keeps its layers
    assert len(sp.get_masks(model)) == 3
    row = result.layers[1]
    assert (row.name, row.shape, row.rows) == ("2", (128, 128), 8)
    assert row.sparsity == pytest.approx(0.9, abs=0.01)
    assert row.dense_seconds > 0 and row.sparse_seconds > 0 and "faster" in row.reason
    assert "sparse kernels in 3 of 3 Linear layers" in str(result)


def test_a_layer_no_kernel_beats_stays_dense_and_says_by_how_much():
    result = sp.export_sparse(_pruned_mlp(), torch.randn(8, 32), min_speedup=1e9, rounds=1)
    assert not result.swapped
    assert all(type(m) is nn.Linear for m in result.model if not isinstance(m, nn.ReLU))
    assert all("below min_speedup" in row.reason and row.speedup for row in result.layers)


def test_alike_layers_are_timed_once_and_dense_layers_not_at_all():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64), nn.Linear(64, 64))
    sp.prune(model[0], 0.9, criterion="magnitude", min_density=0)
    sp.prune(model[1], 0.9, criterion="magnitude", min_density=0)
    result = sp.export_sparse(model, torch.randn(4, 64), min_speedup=ALWAYS, rounds=1)
    first, second, dense = result.layers
    assert "timed on" not in first.reason and "(as timed on 0)" in second.reason
    assert second.dense_seconds == first.dense_seconds
    assert dense.kernel is None and "below min_sparsity" in dense.reason
    assert dense.dense_seconds is None


class _WithAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(32, 4, batch_first=True)
        self.head = nn.Linear(32, 4)

    def forward(self, tokens: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return self.head(self.attention(tokens, tokens, tokens)[0] * scale)


def test_linears_whose_parent_reads_the_weight_are_left_alone_and_dict_inputs_work():
    torch.manual_seed(0)
    model = _WithAttention().eval()
    sp.prune(model, 0.9, criterion="magnitude", scope="layer", min_density=0)
    inputs = {"tokens": torch.randn(2, 5, 32), "scale": torch.ones(1)}
    result = sp.export_sparse(model, inputs, min_speedup=ALWAYS, rounds=1)
    rows = {row.name: row for row in result.layers}
    assert "does not run" in rows["attention.out_proj"].reason
    assert rows["head"].kernel is not None and rows["head"].rows == 10
    torch.testing.assert_close(result.model(**inputs), model(**inputs), rtol=1e-5, atol=1e-5)


def test_inputs_are_taken_from_the_first_batch_of_data():
    batches = [(torch.randn(3, 32), torch.zeros(3, dtype=torch.long))]
    result = sp.export_sparse(_pruned_mlp(), data=batches, min_speedup=ALWAYS, rounds=1)
    assert [row.rows for row in result.layers] == [3, 3, 3]


def test_an_exported_model_refuses_sp_save_in_one_line(tmp_path):
    result = sp.export_sparse(_pruned_mlp(), torch.randn(2, 32), min_speedup=ALWAYS, rounds=1)
    with pytest.raises(sp.SensipruneError, match="save the masked model instead"):
        sp.save(result.model, tmp_path / "exported")
    assert not (tmp_path / "exported").exists()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"min_sparsity": 1.0}, "min_sparsity must be in"),
        ({"min_speedup": 0}, "min_speedup must be above 0"),
        ({"rounds": 0}, "rounds must be a positive integer"),
        ({"kernels": ["dense"]}, "unknown sparse kernel dense; choose from csr"),
        ({"kernels": []}, r"unknown sparse kernel \(none given\)"),
    ],
)
def test_bad_settings_are_one_line(settings, message):
    with pytest.raises(sp.SensipruneError, match=message):
        sp.export_sparse(_pruned_mlp(), torch.randn(2, 32), **settings)


def test_without_inputs_or_data_it_says_what_to_pass():
    with pytest.raises(sp.SensipruneError, match="export_sparse needs example_inputs"):
        sp.export_sparse(_pruned_mlp())


class _ScaledLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * super().forward(x)


def test_a_linear_subclass_with_its_own_forward_is_left_alone():
    torch.manual_seed(0)
    model = nn.Sequential(_ScaledLinear(16, 16))
    sp.prune(model, 0.9, criterion="magnitude", min_density=0)
    result = sp.export_sparse(model, torch.randn(2, 16), min_speedup=ALWAYS, rounds=1)
    assert result.layers[0].reason == "_ScaledLinear has its own forward"
    assert type(result.model[0]) is _ScaledLinear
