"""Honest numbers: parameters, FLOPs (torch.utils.flop_counter) and measured latency."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import (
    FlopCounterMode,
    flop_registry,
    shape_wrapper,
)

from sensiprune.apply.masks import lazy_masks
from sensiprune.errors import SensipruneError, first_line
from sensiprune.handlers.base import countable_by_shape, layer_flops
from sensiprune.memory import steady_allocator
from sensiprune.modes import eval_mode
from sensiprune.structure.channels import tensor_shapes
from sensiprune.threads import warn_if_threads_sleep


@dataclass(frozen=True)
class ParamCount:
    total: int
    nonzero: int  # pruned (masked) weights excluded; unmasked zeros still count

    @property
    def compression(self) -> float:
        return self.total / max(self.nonzero, 1)


def count_parameters(model: nn.Module) -> ParamCount:
    total = sum(p.numel() for p in model.parameters())
    pruned = sum(int((~m).sum()) for m in lazy_masks(model).values())
    return ParamCount(total, total - pruned)


@dataclass(frozen=True)
class FlopCount:
    dense: int  # what the hardware does when the model runs as is
    effective: int  # multiply-adds of pruned weights removed: what sparse kernels could skip

    @property
    def reduction(self) -> float:
        return self.dense / max(self.effective, 1)


_NO_DECOMPOSITION: set[torch._ops.OpOverload] = set()
_SHAPE_WRAPPED = shape_wrapper(lambda: 0).__code__


def _shapes(value: object) -> object:
    """What flop_counter's formulas read: tensors as their shapes, anything else as is."""
    if isinstance(value, torch.Tensor):
        return value.shape
    if isinstance(value, (list, tuple)):
        return type(value)(_shapes(v) for v in value)
    if isinstance(value, dict):
        return {k: _shapes(v) for k, v in value.items()}
    return value


def _formula_on_values(formula: Callable) -> Callable:
    """A registered formula as a function of the op's arguments and output. Most formulas are
    written for shapes and wrapped to take tensors through a pytree map that costs more than
    the formula; they get the same shapes from a plain recursion instead."""
    raw = getattr(formula, "__wrapped__", None)
    if raw is None or getattr(formula, "__code__", None) is not _SHAPE_WRAPPED:
        return formula

    def on_values(*args: object, out_val: object = None, **kwargs: object) -> int:
        return raw(*_shapes(args), out_shape=_shapes(out_val), **_shapes(kwargs))

    return on_values


class TotalFlops(TorchDispatchMode):
    """The total of ``FlopCounterMode`` (same formulas, same decompositions) without its
    per-module bookkeeping, which costs more than the forward pass itself on small inputs and
    sits on every structured prune's path."""

    formulas: ClassVar[dict[torch._ops.OpOverloadPacket, Callable]] = {}

    def __init__(self) -> None:
        super().__init__()
        self.total = 0
        self.counted_ops = 0  # ops with a FLOP formula seen, whatever their count

    def __torch_dispatch__(
        self,
        func: torch._ops.OpOverload,
        types: object,
        args: tuple = (),
        kwargs: dict | None = None,
    ) -> object:
        kwargs = kwargs or {}
        packet = func._overloadpacket
        formula = self.formulas.get(packet)
        if formula is None and packet in flop_registry:
            formula = self.formulas[packet] = _formula_on_values(flop_registry[packet])
        if formula is None:
            if func is not torch.ops.prim.device.default and func not in _NO_DECOMPOSITION:
                decomposed = func.decompose(*args, **kwargs)
                if decomposed is not NotImplemented:
                    return decomposed
                _NO_DECOMPOSITION.add(func)  # a property of the op, whatever its arguments
            return func(*args, **kwargs)
        out = func(*args, **kwargs)
        self.total += formula(*args, **kwargs, out_val=out)
        self.counted_ops += 1
        return out


@contextlib.contextmanager
def counting_flops(model: nn.Module, per_module: bool = False) -> Iterator:
    """Count the FLOPs of whatever runs ``model`` inside, in eval mode: a ``FlopCounterMode``
    with ``per_module``, else a ``TotalFlops``. Grad stays on: fused inference fast paths
    (TransformerEncoderLayer's, say) would hide their FLOPs from the counter, and with grad
    on the counted math path runs instead."""
    counter = FlopCounterMode(display=False) if per_module else TotalFlops()
    with eval_mode(model), torch.enable_grad(), counter:
        yield counter


def counted_forward(
    model: nn.Module, inputs: Sequence[torch.Tensor], failure: str, layers_only: bool = False
) -> tuple[int, list[tuple[int, ...]]]:
    """FLOPs and output shapes of one forward pass; a failure is one error line after
    ``failure``. ``layers_only`` counts only layers of known types, from their shapes (see
    :func:`sensiprune.handlers.base.layer_flops`): exact, and cheaper, when nothing else runs
    an op with FLOPs (the dependency graph's pass found out)."""
    try:
        if layers_only:
            flops = [0]

            def count(module: nn.Module, args: tuple, output: object) -> None:
                if countable_by_shape(module, args):
                    flops[0] += layer_flops(module, args, output)

            hook = nn.modules.module.register_module_forward_hook(count)
            try:
                with eval_mode(model), torch.no_grad():
                    output = model(*inputs)
            finally:
                hook.remove()
            return flops[0], tensor_shapes(output)
        with counting_flops(model) as counter:
            output = model(*inputs)
    except Exception as exc:
        raise SensipruneError(f"{failure}: {first_line(exc)}") from exc
    return counter.total, tensor_shapes(output)


def module_flops(model: nn.Module, *example_inputs: torch.Tensor) -> tuple[int, dict[str, int]]:
    """FLOPs of one forward pass, in total and per module (by name; "" is the model)."""
    with counting_flops(model, per_module=True) as counter:
        model(*example_inputs)
    root = type(model).__name__
    per_module = {}
    for key, ops in counter.get_flop_counts().items():
        if key == root or key.startswith(root + "."):
            per_module[key[len(root) + 1 :]] = sum(ops.values())
    return counter.get_total_flops(), per_module


def count_flops(model: nn.Module, *example_inputs: torch.Tensor) -> FlopCount:
    """FLOPs of one forward pass; ``effective`` scales each masked layer by its density."""
    total, per_module = module_flops(model, *example_inputs)
    saved = 0.0
    for name, keep in lazy_masks(model).items():
        layer = name.rpartition(".")[0]
        saved += per_module.get(layer, 0) * (1.0 - keep.float().mean().item())
    return FlopCount(total, round(total - saved))


def latency(
    model: nn.Module, *example_inputs: torch.Tensor, warmup: int = 5, repeats: int = 30
) -> float:
    """Median seconds of one forward pass after ``warmup`` untimed runs (with malloc kept
    steady: see :mod:`sensiprune.memory`)."""
    steady_allocator()
    warn_if_threads_sleep()
    with eval_mode(model), torch.no_grad():
        for _ in range(warmup):
            model(*example_inputs)
        devices = _devices(example_inputs)
        return statistics.median(
            _timed(lambda: model(*example_inputs), devices) for _ in range(repeats)
        )


def speedup(
    baseline: nn.Module,
    candidate: nn.Module,
    *example_inputs: torch.Tensor,
    warmup: int = 3,
    rounds: int = 7,
    repeats: int = 10,
) -> float:
    """How many times faster ``candidate`` runs than ``baseline``: the median over ``rounds``
    of the ratio of their median times, the two timed in alternation."""
    with eval_mode(baseline), eval_mode(candidate), torch.no_grad():
        per_round = timed_alternately(
            [lambda: baseline(*example_inputs), lambda: candidate(*example_inputs)],
            _devices(example_inputs),
            warmup=warmup,
            rounds=rounds,
            repeats=repeats,
        )
    return statistics.median(slow / fast for slow, fast in per_round)


def timed_alternately(
    calls: Sequence[Callable[[], object]],
    devices: Sequence[torch.device] = (),
    *,
    warmup: int = 3,
    rounds: int = 7,
    repeats: int = 10,
) -> list[list[float]]:
    """Per round, the median seconds of each call. The calls are timed in turn, one run of
    each at a time: timing one and then the other lets a noisy machine's slow spell fall on
    one side only; alternating puts all of them under the same conditions. Host memory is
    kept steady first (:mod:`sensiprune.memory`): with malloc's defaults the ratio of the
    same two models moved from 1.16x to 2.08x with the process's history. The CPU's thread
    team had best spin between operators too (:mod:`sensiprune.threads`)."""
    steady_allocator()
    warn_if_threads_sleep()
    for _ in range(warmup):
        for call in calls:
            call()
    per_round = []
    for _ in range(rounds):
        runs = [[_timed(call, devices) for call in calls] for _ in range(repeats)]
        per_round.append([statistics.median(times) for times in zip(*runs, strict=True)])
    return per_round


def _devices(inputs: Sequence[object]) -> list[torch.device]:
    return list(
        {x.device for x in inputs if isinstance(x, torch.Tensor) and x.device.type == "cuda"}
    )


def _timed(call: Callable[[], object], devices: Sequence[torch.device] = ()) -> float:
    """Seconds of one call; on a GPU, until its kernels have finished, not just been queued."""
    for device in devices:
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    call()
    for device in devices:
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def weights_kept(dense: nn.Module, pruned: nn.Module) -> list[dict[str, int | str]]:
    """Per weight tensor (ndim >= 2): its size before, and the weights left after pruning,
    whether they were masked or physically removed."""
    after = dict(pruned.named_parameters())
    pruned_masks = lazy_masks(pruned)
    rows = []
    for name, weight in dense.named_parameters():
        if weight.ndim < 2:
            continue
        now = after.get(name)
        kept = 0 if now is None else now.numel()
        if name in pruned_masks:
            kept = int(pruned_masks[name].sum())
        rows.append({"name": name, "dense": weight.numel(), "kept": kept})
    return rows
