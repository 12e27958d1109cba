"""A pruned model exported to ONNX with a dynamic batch dimension, the masked zeros baked in,
written whole or not at all."""

from __future__ import annotations

import copy
import importlib.util
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from sensiprune.apply.masks import make_permanent
from sensiprune.apply.sparse_kernels import refuse_sparse_layers
from sensiprune.errors import SensipruneError, first_line


def require_exporter() -> None:
    if importlib.util.find_spec("onnxscript") is None:
        raise SensipruneError(
            "report.onnx needs the ONNX exporter: pip install 'sensiprune[onnx]' "
            "(or set report.onnx: false)"
        )


def deployable(model: nn.Module) -> nn.Module:
    """A copy without mask hooks, as it would be deployed: the masked zeros baked in."""
    plain = copy.deepcopy(model)
    make_permanent(plain)
    return plain


def export_onnx(model: nn.Module, inputs: tuple[torch.Tensor, ...], path: Path) -> None:
    """Export with a dynamic batch dimension, checked by ONNX Runtime against torch."""
    refuse_sparse_layers(model, "export to ONNX")
    plain = deployable(model).eval()
    batch = torch.export.Dim("batch")
    with tempfile.TemporaryDirectory(dir=path.parent) as staging, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        staged = Path(staging) / path.name
        try:
            torch.onnx.export(
                plain,
                inputs,
                str(staged),
                dynamo=True,
                external_data=False,
                verbose=False,
                dynamic_shapes=tuple({0: batch} for _ in inputs),
            )
        except Exception as exc:  # the exporter's many failure types all mean the same here
            raise SensipruneError(
                f"ONNX export failed ({type(exc).__name__}: {first_line(exc)[:200]}); "
                "the pruned model is saved in model/; set report.onnx: false to skip the export"
            ) from exc
        staged.replace(path)
