"""Pruning inside ``transformers.Trainer.train()``: one line for a Hugging Face user.

``Trainer(..., callbacks=[PruningCallback(0.5, "taylor", data=batches, steps=8)])`` prunes at
``steps`` points spread over a part of training, along Zhu & Gupta's cubic schedule (one step is
one-shot pruning at the start). Masks are kept through the Trainer's optimiser steps by the same
hook that keeps them through any torch optimiser. Structured pruning changes parameter shapes
under the Trainer's optimiser, so it belongs before ``train()``: ``sp.prune(structured=True)``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from torch import nn
from transformers import TrainerCallback

from sensiprune.data import Batch, LossFn
from sensiprune.errors import SensipruneError
from sensiprune.options import PruneOptions
from sensiprune.pruning import prune_with
from sensiprune.selection.schedule import sparsity_at
from sensiprune.selection.unstructured import Sparsity, check_sparsity

log = logging.getLogger(__name__)


def model_loss(model: nn.Module, batch: Batch) -> Any:
    """The loss a Hugging Face model computes itself from a batch that carries labels."""
    output = model(**batch)
    if getattr(output, "loss", None) is None:
        raise SensipruneError(
            "the model returned no loss: give batches with labels, or pass loss_fn"
        )
    return output.loss


class PruningCallback(TrainerCallback):
    def __init__(
        self,
        sparsity: Sparsity,
        criterion: str = "magnitude",
        data: Iterable[Batch] | None = None,
        loss_fn: LossFn | None = None,
        steps: int = 1,
        start: float = 0.0,
        end: float = 0.5,
        curve: str = "cubic",
        options: PruneOptions | None = None,
    ) -> None:
        """Prune to ``sparsity`` in ``steps`` events between fractions ``start`` and ``end`` of
        training, along ``curve`` (cubic, linear or geometric: see
        :func:`~sensiprune.selection.schedule.sparsity_at`); ``data`` (needed by gradient
        criteria) and ``loss_fn`` (default: the model's own loss) score the weights;
        ``options`` holds the other settings of every prune (its criterion is
        ``criterion``)."""
        check_sparsity(sparsity)
        sparsity_at(sparsity, 1, steps, curve)  # validates steps and curve
        if not 0.0 <= start <= end <= 1.0:
            raise SensipruneError(f"need 0 <= start <= end <= 1, got start={start}, end={end}")
        options = replace(options or PruneOptions(), criterion=criterion)
        options.check()
        if options.structured is not None:
            raise SensipruneError(
                "structured pruning inside Trainer.train() would change parameters under its "
                "optimiser: prune with sp.prune(structured=True) before train()"
            )
        self.sparsity, self.criterion, self.steps, self.curve = sparsity, criterion, steps, curve
        self.data = list(data) if data is not None else None
        self.loss_fn = loss_fn or model_loss
        self.window = (start, end)
        self.options = options
        self.events: dict[int, int] = {}
        self.history: list[tuple[int, float]] = []  # (global step, prunable sparsity)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        total = state.max_steps
        start, end = (round(f * total) for f in self.window)
        span = max(end - start, 1)
        self.events = {start + (i - 1) * span // self.steps: i for i in range(self.steps, 0, -1)}
        self._maybe_prune(state.global_step, model)

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        self._maybe_prune(state.global_step, model)

    def _maybe_prune(self, step: int, model: nn.Module | None) -> None:
        event = self.events.pop(step, None)
        if event is None or model is None:
            return
        target = sparsity_at(self.sparsity, event, self.steps, self.curve)
        result = prune_with(model, target, self.options, self.data, self.loss_fn)
        self.history.append((step, result.sparsity))
        log.info("step %d: pruned to %.1f%% (%s)", step, 100 * result.sparsity, self.criterion)
