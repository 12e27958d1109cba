"""Small, mask-aware fine-tuning and evaluation loops."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from sensiprune.data import Batch, LossFn, as_batches, check_labels, default_loss, forward
from sensiprune.errors import SensipruneError
from sensiprune.modes import eval_mode
from sensiprune.progress import progress

log = logging.getLogger(__name__)
Metric = Callable[[nn.Module, Batch], tuple[float, int]]
LR_SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class FinetuneResult:
    """Mean training loss of each epoch."""

    epoch_losses: tuple[float, ...]
    steps: int

    def __str__(self) -> str:
        losses = ", ".join(f"{x:.4f}" for x in self.epoch_losses)
        return f"fine-tuned {self.steps} steps; loss per epoch: {losses}"


def finetune(
    model: nn.Module,
    data: Iterable[Batch],
    epochs: int = 1,
    loss_fn: LossFn | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    lr: float = 1e-3,
    show_progress: bool = True,
    before_step: Callable[[int], None] | None = None,
    lr_schedule: str = "constant",
) -> FinetuneResult:
    """Train in place; masked weights stay exactly zero (see masks.py), whatever the optimiser.

    The default optimiser is Adam with ``lr``. A loss or gradient that stops being finite ends
    training with an error before the bad step is applied, and the buffers its forward pass
    changed (BatchNorm's running statistics) are put back, so the model is that of the last
    good step. ``before_step(i)`` runs before the i-th batch (from 0) of every epoch: gradual
    pruning. ``lr_schedule="cosine"`` lowers every learning rate along a half cosine, epoch by
    epoch, towards zero, so that the last epochs settle instead of jumping about at full
    rate; the optimiser's rates are put back at the end.
    """
    if not isinstance(epochs, int) or epochs < 0:
        raise SensipruneError(f"epochs must be a non-negative integer, got {epochs!r}")
    if not lr > 0:
        raise SensipruneError(f"lr must be positive, got {lr!r}")
    if lr_schedule not in LR_SCHEDULES:
        raise SensipruneError(
            f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {lr_schedule!r}"
        )
    batches = as_batches(data, "train data")
    loss_fn = loss_fn or default_loss
    optimizer = optimizer or torch.optim.Adam(
        [p for p in model.parameters() if p.requires_grad], lr=lr
    )
    model.train()
    buffers = list(model.buffers())
    kept = [b.detach().clone() for b in buffers]
    epoch_losses: list[float] = []
    steps = 0
    rates = [group["lr"] for group in optimizer.param_groups]
    try:
        for epoch in range(epochs):
            if lr_schedule == "cosine":
                _set_rates(optimizer, rates, 0.5 * (1.0 + math.cos(math.pi * epoch / epochs)))
            total, count = 0.0, 0
            label = f"fine-tuning epoch {epoch + 1}/{epochs}"
            for batch in progress(batches, label, show_progress):
                if before_step is not None:
                    before_step(count)
                for copy, buffer in zip(kept, buffers):
                    copy.copy_(buffer)
                loss = loss_fn(model, batch)
                bad = None if torch.isfinite(loss) else f"training loss became {loss.item()}"
                if bad is None:
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if not _finite(_with_grads(optimizer)):
                        bad = "gradient stopped being finite"
                if bad is not None:
                    for copy, buffer in zip(kept, buffers):
                        buffer.copy_(copy)
                    raise SensipruneError(
                        f"the {bad} at epoch {epoch + 1}, step {count + 1}; the model is that of "
                        "the last good step: lower the lr"
                    )
                optimizer.step()
                total += loss.item()
                count += 1
                steps += 1
            if count == 0:
                raise SensipruneError("train data yielded no batches: pass a non-empty iterable")
            epoch_losses.append(total / count)
            log.info("epoch %d: mean loss %.4f", epoch + 1, epoch_losses[-1])
    finally:
        _set_rates(optimizer, rates, 1.0)
    model.eval()
    return FinetuneResult(tuple(epoch_losses), steps)


def _set_rates(optimizer: torch.optim.Optimizer, rates: list[float], scale: float) -> None:
    for group, rate in zip(optimizer.param_groups, rates):
        group["lr"] = rate * scale


def _with_grads(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]


def _finite(params: list[torch.Tensor]) -> bool:
    """Every gradient finite, read back from the device once per step, not once per tensor."""
    if not params:
        return True
    device = params[0].grad.device  # a model spread over devices: gathered on the first one
    return bool(torch.stack([torch.isfinite(p.grad).all().to(device) for p in params]).all())


def correct_predictions(model: nn.Module, batch: Batch) -> tuple[float, int]:
    """Accuracy numerator and denominator of an (inputs, labels) batch."""
    right = _correct(model, batch)
    return float(right.sum()), int(right.numel())


def _correct(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Whether each label of an (inputs, labels) batch is predicted, flat."""
    logits = forward(model, batch[0])
    check_labels(logits, batch[1])
    return (logits.argmax(-1) == batch[1]).reshape(-1).cpu()


def metric_units(
    model: nn.Module, data: Iterable[Batch], metric: Metric | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The metric's sums and sample counts unit by unit, in eval mode: per sample for the
    default accuracy, per batch for another metric (the finest a metric reports). Two
    models' units on the same data are paired, which gives the standard error of their
    difference from every sample, not from a few folds."""
    sums, counts = [], []
    with eval_mode(model), torch.no_grad():
        for batch in as_batches(data, "evaluation data"):
            if metric is None:
                right = _correct(model, batch).double()
                sums.append(right)
                counts.append(torch.ones_like(right))
            else:
                value, n = metric(model, batch)
                sums.append(torch.tensor([value], dtype=torch.float64))
                counts.append(torch.tensor([n], dtype=torch.float64))
    return torch.cat(sums), torch.cat(counts)


def evaluate(model: nn.Module, data: Iterable[Batch], metric: Metric | None = None) -> float:
    """Weighted mean of ``metric`` (default: accuracy) over the data, in eval mode."""
    return evaluate_counted(model, data, metric)[0]


def evaluate_counted(
    model: nn.Module, data: Iterable[Batch], metric: Metric | None = None
) -> tuple[float, int]:
    """:func:`evaluate`'s mean and how many samples it covers: means of parts of the data
    (held-out folds) are pooled by it."""
    metric = metric or correct_predictions
    batches = as_batches(data, "evaluation data")
    total, count = 0.0, 0
    with eval_mode(model), torch.no_grad():
        for batch in batches:
            value, n = metric(model, batch)
            total += value
            count += n
    if count == 0:
        raise SensipruneError("evaluation data yielded no samples")
    return total / count, count
