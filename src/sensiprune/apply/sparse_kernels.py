"""Sparse kernels a pruned Linear can run on, and the layer that runs one.

Which kernel is fastest depends on the device, the sparsity, the shape and the number of rows
a call multiplies: on a 2-core CPU ``F.linear`` with a CSR weight wins at one row and
``addmm(CSR, x.T)`` at 32, and BSR pays only where the zeros come in whole blocks. So every
kernel here is a candidate that export (sparse_export.py) times against the dense layer; none
is chosen by rule.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sensiprune.errors import SensipruneError

Run = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return F.linear(x, weight, bias)


def _transposed(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``(W @ x.T).T``: the sparse matrix on the left, where torch's CPU kernels are fast
    for many rows."""
    if bias is None:
        return torch.mm(weight, x.T).T
    return torch.addmm(bias.unsqueeze(1), weight, x.T).T


@dataclass(frozen=True)
class Kernel:
    """One way to multiply by a sparse weight: its storage layout and the call that runs it."""

    name: str
    layout: str  # "csr" or "bsr"
    run: Run
    block: int = 1  # BSR's square block size

    def fits(self, weight: torch.Tensor) -> bool:
        """Whether the layout can hold ``weight``, and is worth timing there: BSR only where
        at least half of its blocks are all zero (unstructured zeros fill every block)."""
        if weight.ndim != 2 or weight.is_cuda:
            return False
        if self.layout == "csr":
            return True
        rows, cols = weight.shape
        if rows % self.block or cols % self.block:
            return False
        blocks = weight.reshape(rows // self.block, self.block, cols // self.block, self.block)
        return bool((blocks.abs().amax(dim=(1, 3)) == 0).float().mean() >= 0.5)

    def pack(self, weight: torch.Tensor) -> torch.Tensor:
        with warnings.catch_warnings():  # "sparse CSR support is in beta": said once, here
            warnings.simplefilter("ignore", UserWarning)
            if self.layout == "csr":
                return weight.detach().to_sparse_csr()
            return weight.detach().to_sparse_bsr((self.block, self.block))


KERNELS: dict[str, Kernel] = {
    k.name: k
    for k in (
        Kernel("csr", "csr", _linear),
        Kernel("csr-transposed", "csr", _transposed),
        *(Kernel(f"bsr{b}", "bsr", _linear, b) for b in (16, 32)),
        *(Kernel(f"bsr{b}-transposed", "bsr", _transposed, b) for b in (16, 32)),
    )
}


class SparseLinear(nn.Module):
    """A Linear whose weight is stored sparse and multiplied by one kernel. For inference:
    the weight is a buffer, not a parameter, so nothing trains it (fine-tune the masked
    model, then export again)."""

    def __init__(self, linear: nn.Linear, kernel: Kernel) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.kernel = kernel.name
        self.register_buffer("weight", kernel.pack(linear.weight))
        bias = linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self._run = kernel.run

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        return self._run(rows, self.weight, self.bias).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        kept = self.weight.values().count_nonzero().item()
        density = kept / (self.in_features * self.out_features)
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"kernel={self.kernel}, density={density:.3f}"
        )


def refuse_sparse_layers(model: nn.Module, action: str) -> None:
    """One line instead of a failure deep inside ``action``: sparse weights have no place in
    a safetensors file or an ONNX graph, and the masked model they came from does."""
    found = next((name for name, m in model.named_modules() if isinstance(m, SparseLinear)), None)
    if found is not None:
        raise SensipruneError(
            f"cannot {action} a model from sp.export_sparse ({found or 'the model'} runs a "
            f"sparse kernel); {action} the masked model instead, and export it again after "
            "loading"
        )
