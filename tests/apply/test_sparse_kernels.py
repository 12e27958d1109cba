"""Every sparse kernel multiplies as the dense Linear does; BSR is offered only for zeros in
blocks; the sparse layer keeps a Linear's interface."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sensiprune.apply.sparse_kernels import KERNELS, SparseLinear, refuse_sparse_layers
from sensiprune.errors import SensipruneError


def _block_sparse(rows: int, cols: int, block: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    keep = torch.rand(rows // block, cols // block, generator=generator) > 0.75
    keep = keep.repeat_interleave(block, 0).repeat_interleave(block, 1)
    return torch.randn(rows, cols, generator=generator) * keep


@pytest.mark.parametrize("name", list(KERNELS))
@pytest.mark.parametrize("bias", [True, False])
def test_every_kernel_matches_the_dense_product(name, bias):
    kernel = KERNELS[name]
    weight = _block_sparse(64, 96, 32)
    assert kernel.fits(weight)
    x = torch.randn(5, 96)
    b = torch.randn(64) if bias else None
    got = kernel.run(x, kernel.pack(weight), b)
    torch.testing.assert_close(got, F.linear(x, weight, b), rtol=1e-5, atol=1e-5)


def test_bsr_is_offered_only_where_whole_blocks_are_zero():
    generator = torch.Generator().manual_seed(0)
    scattered = torch.randn(64, 64, generator=generator)
    scattered[torch.rand(64, 64, generator=generator) < 0.9] = 0  # 90% zeros, no empty block
    assert KERNELS["csr"].fits(scattered)
    assert not KERNELS["bsr16"].fits(scattered)
    assert KERNELS["bsr16"].fits(_block_sparse(64, 64, 16))
    assert not KERNELS["bsr32"].fits(_block_sparse(48, 64, 16))  # 48 rows: no 32-row blocks


def test_sparse_linear_takes_any_leading_dimensions_and_pickles():
    torch.manual_seed(0)
    linear = nn.Linear(32, 16)
    with torch.no_grad():
        linear.weight[torch.rand(16, 32) < 0.8] = 0
    layer = SparseLinear(linear, KERNELS["csr-transposed"])
    x = torch.randn(2, 3, 32)
    torch.testing.assert_close(layer(x), linear(x), rtol=1e-5, atol=1e-5)
    assert (layer.in_features, layer.out_features) == (32, 16)
    assert not list(layer.parameters())  # nothing for an optimiser to train
    assert "kernel=csr-transposed" in repr(layer)
    buffer = io.BytesIO()
    torch.save(layer, buffer)
    buffer.seek(0)
    again = torch.load(buffer, weights_only=False)
    torch.testing.assert_close(again(x), linear(x), rtol=1e-5, atol=1e-5)


def test_models_with_sparse_layers_are_refused_in_one_line():
    model = nn.Sequential(SparseLinear(nn.Linear(4, 4), KERNELS["csr"]))
    with pytest.raises(SensipruneError, match=r"cannot save .* \(0 runs a sparse kernel\)"):
        refuse_sparse_layers(model, "save")
    refuse_sparse_layers(nn.Sequential(nn.Linear(4, 4)), "save")  # dense: nothing to say
