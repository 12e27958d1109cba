"""One pass over the data with hooks, collecting what the criteria need.

Criteria never loop over data themselves (the measured-loss criterion and OBS's layer-wise
reconstruction are the exceptions that must): gradients, squared gradients, Hessian-diagonal
estimates and input-feature statistics all come from this single pass.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from sensiprune import distributed
from sensiprune.data import Batch, LossFn, checked_loss
from sensiprune.errors import SensipruneError
from sensiprune.handlers.base import input_features, input_matrix_of
from sensiprune.modes import eval_mode
from sensiprune.progress import progress
from sensiprune.targets import Target


class Stat(enum.Enum):
    GRAD = "mean gradient over batches"
    GRAD_ABS = "mean absolute per-batch gradient"
    GRAD_SQ = "mean squared per-batch gradient (empirical Fisher diagonal)"
    HESS_DIAG = "Hutchinson estimate of the Hessian diagonal"
    INPUT_RMS = "root-mean-square of each input feature"
    INPUT_COV = "input second moment X Xᵀ / n of a layer"
    OUTPUT_TAYLOR = "per output channel, mean over samples of |Σ a·∂L/∂a| (feature-map Taylor)"


GRADIENT_STATS = frozenset({Stat.GRAD, Stat.GRAD_ABS, Stat.GRAD_SQ, Stat.HESS_DIAG})
NEEDS_BACKWARD = GRADIENT_STATS | {Stat.OUTPUT_TAYLOR}


@dataclass
class ParamStats:
    """Statistics of one parameter; fields not requested stay None."""

    grad: torch.Tensor | None = None
    grad_abs: torch.Tensor | None = None
    grad_sq: torch.Tensor | None = None
    hess_diag: torch.Tensor | None = None
    input_rms: torch.Tensor | None = None  # broadcast to the weight's shape
    input_cov: torch.Tensor | None = None  # (columns, columns) of weight.flatten(1), precise
    output_taylor: torch.Tensor | None = None  # (output channels,)


def precise(dtype: torch.dtype) -> torch.dtype:
    """The dtype second moments and their algebra run in: float64 where the model is in
    float32 or float64 (exact, and small enough), float32 where it is in 16 bits (a language
    model: its Hessians in float64 would hold twice the memory, and float32 is what SparseGPT
    and Wanda use)."""
    return torch.float64 if dtype in (torch.float32, torch.float64) else torch.float32


def collect(
    model: nn.Module,
    targets: dict[str, Target],
    batches: Iterable[Batch],
    loss_fn: LossFn,
    needs: frozenset[Stat],
    seed: int = 0,
    show_progress: bool = False,
) -> dict[str, ParamStats]:
    """Accumulate the requested statistics over all batches; the model is left unchanged.

    Runs in eval mode (no dropout noise, batch-norm statistics untouched) and uses
    ``torch.autograd.grad``, so ``.grad`` of the parameters is not modified either.
    """
    stats = {name: ParamStats() for name in targets}
    if not needs:
        return stats
    names = list(targets)
    params = [targets[n].param for n in names]
    sums: dict[Stat, list[torch.Tensor]] = {
        s: [torch.zeros_like(p) for p in params] for s in needs & GRADIENT_STATS
    }
    generator = torch.Generator().manual_seed(seed)
    n_batches = 0
    with eval_mode(model), _input_recorder(targets, needs) as recorder:
        for batch in progress(batches, desc="collecting statistics", enabled=show_progress):
            n_batches += 1
            if not needs & NEEDS_BACKWARD:
                with torch.no_grad():
                    checked_loss(loss_fn, model, batch)
                continue
            loss = checked_loss(loss_fn, model, batch)
            want_hessian = Stat.HESS_DIAG in needs
            grads = torch.autograd.grad(loss, params, allow_unused=True, create_graph=want_hessian)
            grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
            if want_hessian:  # needs the graph of the gradients, so before detaching them
                _add(sums[Stat.HESS_DIAG], _hutchinson(params, grads, generator))
            grads = [g.detach() for g in grads]
            if Stat.GRAD in needs:
                _add(sums[Stat.GRAD], grads)
            if Stat.GRAD_ABS in needs:
                _add(sums[Stat.GRAD_ABS], torch._foreach_abs(grads))
            if Stat.GRAD_SQ in needs:
                _add(sums[Stat.GRAD_SQ], torch._foreach_mul(grads, grads))
    # under torch.distributed each rank saw its shard: sum over ranks, then divide
    n_batches = distributed.sum_count(n_batches)
    for per_param in sums.values():
        distributed.sum_(per_param)
    recorder.merge_ranks()
    if n_batches == 0:
        raise SensipruneError("data yielded no batches: pass a non-empty iterable of batches")
    fields = {
        Stat.GRAD: "grad",
        Stat.GRAD_ABS: "grad_abs",
        Stat.GRAD_SQ: "grad_sq",
        Stat.HESS_DIAG: "hess_diag",
    }
    for stat, per_param in sums.items():
        for name, total in zip(names, per_param):
            # NaN and inf survive summation, so one check at the end covers every batch
            if not torch.isfinite(total).all():
                raise SensipruneError(
                    f"the gradient of {name} is not finite on some batch: check the data and "
                    "the loss (the model was not modified)"
                )
            setattr(stats[name], fields[stat], total / n_batches)
    recorder.finish(stats)
    return stats


def _add(totals: list[torch.Tensor], values: list[torch.Tensor]) -> None:
    torch._foreach_add_(totals, values)


def _hutchinson(
    params: list[nn.Parameter], grads: list[torch.Tensor], generator: torch.Generator
) -> list[torch.Tensor]:
    """One Rademacher probe z per batch: E[z ⊙ Hz] = diag(H) (Hutchinson 1990; Yao et al. 2020)."""
    probes = [(torch.randint(0, 2, p.shape, generator=generator) * 2 - 1).to(p) for p in params]
    live = [i for i, g in enumerate(grads) if g.requires_grad]  # unused weights: no curvature
    hvps: list[torch.Tensor | None] = [None] * len(params)
    if live:
        found = torch.autograd.grad(
            [grads[i] for i in live], params, grad_outputs=[probes[i] for i in live],
            allow_unused=True,
        )  # fmt: skip
        hvps = list(found)
    return [torch.zeros_like(z) if hv is None else (z * hv).detach() for z, hv in zip(probes, hvps)]


def can_collect(target: Target, needs: frozenset[Stat]) -> bool:
    """Whether the layer-input statistics in ``needs`` exist for this weight."""
    module, attr = target.module, target.attr
    if needs & {Stat.INPUT_RMS, Stat.OUTPUT_TAYLOR} and input_features(module, attr) is None:
        return False
    return Stat.INPUT_COV not in needs or input_matrix_of(module, attr) is not None


class _InputRecorder:
    """Forward pre-hooks that accumulate input statistics of the target layers."""

    def __init__(self, targets: dict[str, Target], needs: frozenset[Stat]) -> None:
        self.targets = targets
        self.want_rms = Stat.INPUT_RMS in needs
        self.want_cov = Stat.INPUT_COV in needs
        self.want_taylor = Stat.OUTPUT_TAYLOR in needs
        self.taylor: dict[str, torch.Tensor] = {}
        self.samples: dict[str, int] = {}
        self.sq_sum: dict[str, torch.Tensor] = {}
        self.count: dict[str, int] = {}
        self.cov: dict[str, torch.Tensor] = {}
        self.rows: dict[str, int] = {}
        self.handles: list[torch.utils.hooks.RemovableHandle] = []
        if self.want_rms or self.want_cov or self.want_taylor:
            self._check_supported()
            for name, target in targets.items():
                self.handles.append(
                    target.module.register_forward_pre_hook(self._hook_for(name, target))
                )
                if self.want_taylor:
                    self.handles.append(
                        target.module.register_forward_hook(self._output_hook_for(name))
                    )

    def _check_supported(self) -> None:
        needs = {
            s for s, on in ((Stat.INPUT_RMS, self.want_rms), (Stat.INPUT_COV, self.want_cov),
                            (Stat.OUTPUT_TAYLOR, self.want_taylor)) if on
        }  # fmt: skip
        for name, t in self.targets.items():
            if not can_collect(t, frozenset(needs)):
                raise SensipruneError(
                    f"this criterion needs the inputs of {name} "
                    f"({type(t.module).__name__}), which it cannot read: pass "
                    f"ignore=[{t.layer!r}] or choose a gradient criterion"
                )

    def _hook_for(self, name: str, target: Target):
        features = input_features(target.module, target.attr)

        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0].detach()
            if self.want_rms:
                sq, n = features.sq_sum(module, x.double())
                self.sq_sum[name] = self.sq_sum.get(name, 0) + sq
                self.count[name] = self.count.get(name, 0) + n
            if self.want_cov:
                rows = features.matrix(module, x).to(precise(x.dtype))
                if name in self.cov:  # in place: a layer's X Xᵀ is large, hold one
                    self.cov[name].addmm_(rows.T, rows)
                else:
                    self.cov[name] = rows.T @ rows
                self.rows[name] = self.rows.get(name, 0) + rows.shape[0]

        return hook

    def _output_hook_for(self, name: str):
        target = self.targets[name]
        features = input_features(target.module, target.attr)

        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            if not output.requires_grad:
                return
            activation = output.detach()

            def on_grad(grad: torch.Tensor) -> None:
                per_sample = features.taylor(module, activation, grad)
                self.taylor[name] = self.taylor.get(name, 0) + per_sample.abs().sum(0)
                self.samples[name] = self.samples.get(name, 0) + per_sample.shape[0]

            output.register_hook(on_grad)

        return hook

    def merge_ranks(self) -> None:
        """Sum every rank's accumulators (a rank may have skipped a layer), in rank order."""
        if not distributed.active():
            return
        for store in (self.sq_sum, self.count, self.taylor, self.samples, self.cov, self.rows):
            merged: dict = {}
            for part in distributed.gather(store):
                for key, value in part.items():
                    merged[key] = merged.get(key, 0) + value
            store.clear()
            store.update(merged)

    def finish(self, stats: dict[str, ParamStats]) -> None:
        for name, target in self.targets.items():
            param = target.param
            if self.want_rms and name in self.sq_sum:
                rms = (self.sq_sum[name] / self.count[name]).sqrt().to(param.dtype)
                features = input_features(target.module, target.attr)
                stats[name].input_rms = features.per_weight(target.module, rms)
            if self.want_taylor and name in self.taylor:
                stats[name].output_taylor = (self.taylor[name] / self.samples[name]).to(param.dtype)
            if self.want_cov and name in self.cov:
                stats[name].input_cov = self.cov[name].div_(self.rows[name])
        for name in self.targets:
            missing = (self.want_rms and name not in self.sq_sum) or (
                self.want_cov and name not in self.cov
            )
            if missing:
                raise SensipruneError(
                    f"layer {name} never ran on the data, so its inputs are unknown: "
                    f"ignore it or check the model's forward"
                )

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


@contextlib.contextmanager
def _input_recorder(targets: dict[str, Target], needs: frozenset[Stat]) -> Iterator[_InputRecorder]:
    recorder = _InputRecorder(targets, needs)
    try:
        yield recorder
    finally:
        recorder.remove()
