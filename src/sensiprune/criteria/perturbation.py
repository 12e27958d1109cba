"""The measured loss change: the ground truth that the other criteria approximate."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call, vmap

from sensiprune.criteria.base import Criterion, ScoringContext, register
from sensiprune.data import Batch, LossFn, checked_loss
from sensiprune.errors import SensipruneError
from sensiprune.modes import eval_mode
from sensiprune.progress import progress
from sensiprune.targets import Target

_CHUNK = 256  # perturbed copies of a weight evaluated in one vectorised call
_MAX_COPY_ELEMENTS = 1 << 24  # bounds the memory of those copies for large weights


class _LossOf(nn.Module):
    """Wraps (model, loss_fn, batch) so that functional_call can swap one weight."""

    def __init__(self, model: nn.Module, loss_fn: LossFn, batch: Batch) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn
        self.batch = batch

    def forward(self) -> torch.Tensor:
        return self.loss_fn(self.model, self.batch)


class PerturbationCriterion(Criterion):
    """|ΔL| = |L(w with w_i = 0) − L(w)|, measured for every weight on the scoring data.

    The absolute change, as in the oracle of Molchanov et al. 2017: near a minimum about half
    of the single removals lower the loss a little, and ranking by the signed change removes
    those first, which is catastrophic once many of them go together (test accuracy 0.19
    instead of 0.94 for LeNet-300-100 at 50% sparsity).
    Exact but costs one forward pass per weight (vectorised in chunks with torch.func.vmap,
    falling back to a plain loop for models vmap cannot run): for small models and validation.
    """

    measures_loss = True

    def score(self, ctx: ScoringContext) -> dict[str, torch.Tensor]:
        batches = list(ctx.batches or [])
        if not batches:
            raise SensipruneError("data yielded no batches: pass a non-empty iterable of batches")
        with eval_mode(ctx.model) as model, torch.no_grad():
            base = sum(checked_loss(ctx.loss_fn, model, b) for b in batches) / len(batches)
            return {
                name: (self._loss_changes(model, t, batches, ctx) - base).abs()
                for name, t in progress(
                    ctx.targets.items(), "measuring loss changes", ctx.show_progress
                )
            }

    def _loss_changes(
        self, model: nn.Module, target: Target, batches: Sequence[Batch], ctx: ScoringContext
    ) -> torch.Tensor:
        try:
            return _vectorised(model, target, batches, ctx.loss_fn)
        except (RuntimeError, NotImplementedError):  # vmap cannot run this model's code
            return _looped(model, target, batches, ctx.loss_fn)


def _vectorised(
    model: nn.Module, target: Target, batches: Sequence[Batch], loss_fn: LossFn
) -> torch.Tensor:
    weight = target.param.detach()
    flat = weight.reshape(-1)
    key = f"model.{target.name}"
    totals = torch.zeros(flat.numel(), dtype=torch.float64)
    for batch in batches:
        wrapper = _LossOf(model, loss_fn, batch)

        def loss_with(w: torch.Tensor, wrapper: _LossOf = wrapper) -> torch.Tensor:
            return functional_call(wrapper, {key: w}, ())

        chunk = max(1, min(_CHUNK, _MAX_COPY_ELEMENTS // flat.numel()))
        for start in range(0, flat.numel(), chunk):
            index = torch.arange(start, min(start + chunk, flat.numel()))
            copies = flat.repeat(len(index), 1)
            copies[torch.arange(len(index)), index] = 0
            losses = vmap(loss_with)(copies.reshape(len(index), *weight.shape))
            totals[index] += losses.double().cpu()
    return (totals / len(batches)).to(weight.dtype).reshape(weight.shape)


def _looped(
    model: nn.Module, target: Target, batches: Sequence[Batch], loss_fn: LossFn
) -> torch.Tensor:
    flat = target.param.data.view(-1)
    losses = torch.empty(flat.numel(), dtype=torch.float64)
    for i in range(flat.numel()):
        kept = flat[i].item()
        flat[i] = 0
        try:
            losses[i] = sum(loss_fn(model, b).item() for b in batches) / len(batches)
        finally:
            flat[i] = kept
    return losses.to(flat.dtype).reshape(target.param.shape)


register(
    PerturbationCriterion(
        "perturbation", "|measured loss change| when each weight is zeroed (ground truth, slow)"
    )
)
