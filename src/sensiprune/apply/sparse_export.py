"""``sp.export_sparse``: a pruned model whose sparse Linears run sparse kernels, where that is
measured to be faster.

Masked zeros in a dense layer cost as much as any weight. A sparse kernel skips them, but
only pays above some sparsity that depends on the device, the shape and the rows per call
(on a 2-core CPU, CSR breaks even near 70% for a 4096² layer at 32 rows and loses below 90%
at one row). So each candidate layer is timed, on the inputs it really gets, dense against
every kernel that can hold its weight; it is swapped only where the fastest kernel beats the
dense layer by ``min_speedup``, and every other layer stays as it is.
"""

from __future__ import annotations

import copy
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sensiprune.apply.masks import make_permanent
from sensiprune.apply.sparse_kernels import KERNELS, Kernel, SparseLinear
from sensiprune.errors import SensipruneError, first_line
from sensiprune.measure import timed_alternately
from sensiprune.modes import eval_mode
from sensiprune.structure.inputs import example_arguments


@dataclass(frozen=True)
class SparseLayer:
    """What export did with one Linear, and the measurement behind it."""

    name: str
    shape: tuple[int, int]  # (out_features, in_features)
    rows: int  # rows one call multiplies on the example inputs
    sparsity: float
    kernel: str | None  # the kernel it runs now; None: it stayed dense
    dense_seconds: float | None
    sparse_seconds: float | None  # of the fastest kernel
    reason: str

    @property
    def speedup(self) -> float | None:
        if not self.dense_seconds or not self.sparse_seconds:
            return None
        return self.dense_seconds / self.sparse_seconds


@dataclass(frozen=True)
class SparseExport:
    """The exported model and, per Linear, what was changed and why."""

    model: nn.Module
    layers: tuple[SparseLayer, ...]
    max_difference: float  # largest |exported - masked| output on the example inputs

    @property
    def swapped(self) -> tuple[SparseLayer, ...]:
        return tuple(layer for layer in self.layers if layer.kernel is not None)

    def __str__(self) -> str:
        lines = [
            f"sparse kernels in {len(self.swapped)} of {len(self.layers)} Linear layers "
            f"(outputs within {self.max_difference:.2e} of the masked model)",
            f"{'layer':<40} {'shape':>12} {'rows':>6} {'sparsity':>9} {'kernel':>15} "
            f"{'speed-up':>9}  why",
        ]
        for layer in self.layers:
            ratio = layer.speedup
            shape = "x".join(map(str, layer.shape))
            lines.append(
                f"{layer.name:<40} {shape:>12} {layer.rows:>6} {layer.sparsity:>9.1%} "
                f"{layer.kernel or 'dense':>15} "
                f"{'' if ratio is None else f'{ratio:.2f}x':>9}  {layer.reason}"
            )
        return "\n".join(lines)


def export_sparse(
    model: nn.Module,
    example_inputs: object = None,
    *,
    data: Iterable[Any] | None = None,
    min_sparsity: float = 0.5,
    min_speedup: float = 1.1,
    kernels: Sequence[str] | None = None,
    rounds: int = 5,
) -> SparseExport:
    """A copy of ``model`` for inference in which every Linear that a sparse kernel runs at
    least ``min_speedup`` times faster, timed on this device at the rows ``example_inputs``
    give it (default: the inputs of the first batch of ``data``), runs that kernel. Linears
    with fewer than ``min_sparsity`` zeros are not timed. ``model`` is not changed; masks
    are baked into the copy."""
    chosen = _check(min_sparsity, min_speedup, kernels, rounds)
    exported = copy.deepcopy(model)
    make_permanent(exported)
    arguments = example_arguments(model, example_inputs, data, "export_sparse")

    def call(m: nn.Module) -> Any:
        return m(*arguments)

    inputs = _layer_inputs(exported, call)
    measured: dict[tuple, tuple[Kernel | None, float | None, float | None, str]] = {}
    rows = []
    for name, module in exported.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        rows.append(_decide(exported, name, module, inputs.get(name), chosen, measured,
                            min_sparsity, min_speedup, rounds))  # fmt: skip
    with eval_mode(model), eval_mode(exported), torch.no_grad():
        difference = _max_difference(call(model), call(exported))
    return SparseExport(exported, tuple(rows), difference)


def _check(
    min_sparsity: float, min_speedup: float, kernels: Sequence[str] | None, rounds: int
) -> list[Kernel]:
    if not 0.0 <= min_sparsity < 1.0:
        raise SensipruneError(f"min_sparsity must be in [0, 1), got {min_sparsity!r}")
    if not min_speedup > 0:
        raise SensipruneError(f"min_speedup must be above 0, got {min_speedup!r}")
    if not isinstance(rounds, int) or rounds < 1:
        raise SensipruneError(f"rounds must be a positive integer, got {rounds!r}")
    names = list(KERNELS) if kernels is None else list(kernels)
    unknown = [n for n in names if n not in KERNELS]
    if unknown or not names:
        raise SensipruneError(
            f"unknown sparse kernel {unknown[0] if unknown else '(none given)'}; "
            f"choose from {', '.join(KERNELS)}"
        )
    return [KERNELS[n] for n in names]


def _layer_inputs(model: nn.Module, call: Callable[[nn.Module], Any]) -> dict[str, torch.Tensor]:
    """The input each Linear's own forward receives on the example inputs (the first call's).
    A Linear whose forward never runs (its parent reads the weight, as MultiheadAttention
    does with ``out_proj``) is not listed: swapping it would change nothing, or break it."""
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        module.register_forward_pre_hook(
            lambda _, args, name=name: seen.setdefault(name, args[0].detach())
        )
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
    ]
    try:
        with eval_mode(model), torch.no_grad():
            call(model)
    except Exception as exc:
        raise SensipruneError(
            f"the model does not run on example_inputs: {first_line(exc)}"
        ) from exc
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def _decide(
    model: nn.Module,
    name: str,
    layer: nn.Linear,
    x: torch.Tensor | None,
    kernels: list[Kernel],
    measured: dict,
    min_sparsity: float,
    min_speedup: float,
    rounds: int,
) -> SparseLayer:
    """Time ``layer`` dense and under each kernel; swap it in ``model`` if one pays."""
    weight = layer.weight.detach()
    sparsity = 1.0 - weight.count_nonzero().item() / weight.numel()
    shape = (layer.out_features, layer.in_features)
    rows = 0 if x is None else x.numel() // layer.in_features

    def kept(reason: str, dense: float | None = None, fastest: float | None = None) -> SparseLayer:
        return SparseLayer(name, shape, rows, sparsity, None, dense, fastest, reason)

    if type(layer).forward is not nn.Linear.forward:
        return kept(f"{type(layer).__name__} has its own forward")
    if x is None:
        return kept("its forward does not run on the example inputs")
    if sparsity < min_sparsity:
        return kept(f"below min_sparsity ({min_sparsity:.0%})")
    fitting = [k for k in kernels if k.fits(weight)]
    if not fitting:
        return kept(f"no kernel holds a {weight.dtype} weight on {weight.device.type}")
    # layers alike in shape, rows, dtype and sparsity (to the percent) time alike: once
    key = (shape, rows, weight.dtype, weight.device, round(sparsity, 2),
           tuple(k.name for k in fitting))  # fmt: skip
    if key not in measured:
        measured[key] = (*_fastest(weight, layer.bias, x, fitting, rounds), name)
    best, dense, fastest, timed_on = measured[key]
    if best is None:
        return kept(f"no kernel runs a {weight.dtype} weight on {weight.device.type}")
    also = "" if timed_on == name else f" (as timed on {timed_on})"
    ratio = dense / fastest
    if ratio < min_speedup:
        return kept(f"{best.name} only {ratio:.2f}x, below min_speedup{also}", dense, fastest)
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent), attr, SparseLinear(layer, best))
    return SparseLayer(name, shape, rows, sparsity, best.name, dense, fastest,
                       f"{best.name} {ratio:.2f}x faster{also}")  # fmt: skip


def _fastest(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    x: torch.Tensor,
    kernels: list[Kernel],
    rounds: int,
) -> tuple[Kernel | None, float, float]:
    """The fastest kernel whose output matches the dense layer's, with the dense seconds and
    its own (medians over rounds, all timed in alternation)."""
    rows = x.reshape(-1, weight.shape[1])
    bias = None if bias is None else bias.detach()
    expected = F.linear(rows, weight, bias)
    calls, usable = [lambda: F.linear(rows, weight, bias)], []
    for kernel in kernels:
        try:
            packed = kernel.pack(weight)
            out = kernel.run(rows, packed, bias)
        except (RuntimeError, NotImplementedError):  # no such kernel for this dtype / device
            continue
        if _max_difference(expected, out) <= _tolerance(expected):
            usable.append(kernel)
            calls.append(lambda k=kernel, w=packed: k.run(rows, w, bias))
    if not usable:
        return None, 0.0, 0.0
    devices = [x.device] if x.is_cuda else []
    per_round = timed_alternately(calls, devices, warmup=2, rounds=rounds, repeats=5)
    seconds = [statistics.median(times) for times in zip(*per_round, strict=True)]
    best = min(range(len(usable)), key=lambda i: seconds[i + 1])
    return usable[best], seconds[0], seconds[best + 1]


def _tolerance(reference: torch.Tensor) -> float:
    """Float tolerance for a sum computed in another order: relative to the output's scale."""
    scale = reference.abs().max().item() if reference.numel() else 0.0
    precise = reference.dtype in (torch.float32, torch.float64)
    return (1e-4 if precise else 1e-2) * max(scale, 1.0)


def _max_difference(a: object, b: object) -> float:
    """Largest absolute difference between the tensors of two outputs of the same structure."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if not a.is_floating_point():
            return float((a != b).any())
        return (a.float() - b.float()).abs().max().item() if a.numel() else 0.0
    if isinstance(a, dict) and isinstance(b, dict):
        return max((_max_difference(a[k], b[k]) for k in a if k in b), default=0.0)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return max((_max_difference(x, y) for x, y in zip(a, b)), default=0.0)
    if hasattr(a, "to_tuple") and hasattr(b, "to_tuple"):  # Hugging Face ModelOutput
        return _max_difference(a.to_tuple(), b.to_tuple())
    return 0.0
