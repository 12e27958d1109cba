"""Batches and losses: the only assumptions sensiprune makes about a user's data."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sensiprune.errors import SensipruneError

Batch = Any
LossFn = Callable[[nn.Module, Batch], torch.Tensor]


def default_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Cross-entropy of ``model(batch[0])`` against ``batch[1]``: the classifier case."""
    try:
        inputs, labels = batch[0], batch[1]
    except (TypeError, IndexError, KeyError) as exc:
        raise SensipruneError(
            "the default loss needs (inputs, labels) batches; pass loss_fn(model, batch) "
            "for other batch layouts"
        ) from exc
    logits = forward(model, inputs)
    check_labels(logits, labels)
    return F.cross_entropy(logits, labels)


def forward(model: nn.Module, inputs: Any) -> torch.Tensor:
    """``model(inputs)``, with a failure on the data's shape as one line that says so."""
    try:
        return model(inputs)
    except (RuntimeError, ValueError, IndexError) as exc:
        shape = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SensipruneError(
            f"the model fails on a batch of inputs {shape} ({reason}): check that the data "
            "has the shape and channels the model expects"
        ) from exc


def check_labels(logits: torch.Tensor, labels: Any) -> None:
    """Integer labels must be class indices below the number of the model's outputs (along
    dimension 1, as cross-entropy reads them; -100 is cross-entropy's ignored label)."""
    if not isinstance(labels, torch.Tensor) or labels.is_floating_point():
        return
    labels = labels[labels != -100]
    if not labels.numel():
        return
    classes = logits.shape[1] if logits.dim() > 1 else logits.numel()
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= classes:
        raise SensipruneError(
            f"labels range from {low} to {high}, but the model has {classes} outputs: labels "
            f"must be class indices 0..{classes - 1}"
        )


def as_batches(
    data: Iterable[Batch] | None, what: str = "data"
) -> Sequence[Batch] | Iterable[Batch]:
    """Check that data was given and is re-iterable; one-shot iterators are materialised."""
    if data is None:
        raise SensipruneError(f"{what} is required here: pass an iterable of batches")
    if isinstance(data, (str, bytes)) or not hasattr(data, "__iter__"):
        raise SensipruneError(
            f"{what} must be an iterable of batches (a list or a DataLoader), "
            f"got {type(data).__name__}"
        )
    if iter(data) is data:  # a generator or iterator can only be read once
        data = list(data)
    return data


def checked_loss(loss_fn: LossFn, model: nn.Module, batch: Batch) -> torch.Tensor:
    loss = loss_fn(model, batch)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise SensipruneError(
            f"loss_fn must return a scalar tensor, got {type(loss).__name__}"
            + (f" of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else "")
        )
    if not torch.isfinite(loss):
        raise SensipruneError(
            f"the loss is {loss.item()} on a batch: check the data and the model "
            "(inputs with NaN, a diverged model, labels out of range)"
        )
    return loss.reshape(())
