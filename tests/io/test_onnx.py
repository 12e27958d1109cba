"""ONNX export refuses, in one line and before writing anything, a model that runs sparse
kernels (its masked model exports)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sensiprune as sp
from sensiprune.io.onnx import export_onnx


def test_a_model_from_export_sparse_is_refused_before_anything_is_written(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16))
    sp.prune(model, 0.9, criterion="magnitude", min_density=0)
    exported = sp.export_sparse(model, torch.randn(2, 16), min_speedup=1e-9, rounds=1).model
    target = tmp_path / "model.onnx"
    with pytest.raises(
        sp.SensipruneError, match=r"cannot export to ONNX a model from sp\.export_sparse"
    ):
        export_onnx(exported, (torch.randn(2, 16),), target)
    assert list(tmp_path.iterdir()) == []
