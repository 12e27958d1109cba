"""Batches and losses: the only assumptions sensiprune makes about a user's data."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import SensipruneError

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
    return F.cross_entropy(model(inputs), labels)


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
