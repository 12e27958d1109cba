"""A label-free loss: stay close to the unpruned model's embeddings.

An embedding model has no task head and often no labels. Its sensitivity can still be measured
against itself: the loss is 1 − cosine similarity between the pruned model's sentence embedding
and the unpruned model's, so the gradient points at what changes the embeddings most.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from sensiprune.data import Batch, LossFn
from sensiprune.errors import SensipruneError


def mean_pooled(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over the real tokens (sentence-transformers' pooling), one vector per sequence."""
    if attention_mask is None:
        return hidden.mean(1)
    weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1e-9)


def sentence_embeddings(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Mean-pooled last hidden state of a Hugging Face encoder on a tokenised batch."""
    if not isinstance(batch, Mapping) or "input_ids" not in batch:
        raise SensipruneError(
            "embedding distillation needs tokenised batches: dicts with input_ids "
            "(and attention_mask), as a Hugging Face tokenizer returns them"
        )
    output = model(**batch)
    hidden = output[0] if isinstance(output, (tuple, list)) else output.last_hidden_state
    return mean_pooled(hidden, batch.get("attention_mask"))


def frozen_copy(model: nn.Module) -> nn.Module:
    """A copy in eval mode without gradients: the teacher, safe from pruning the original."""
    return copy.deepcopy(model).eval().requires_grad_(False)


def embedding_distillation(teacher: nn.Module, copy_teacher: bool = True) -> LossFn:
    """``loss_fn(model, batch)``: mean of 1 − cos(model embedding, ``teacher`` embedding).

    A frozen copy of ``teacher`` is kept, so pruning ``teacher`` itself later is safe; pass
    ``copy_teacher=False`` with a :func:`frozen_copy` to share one copy between several uses.
    """
    frozen = frozen_copy(teacher) if copy_teacher else teacher

    def loss(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            target = sentence_embeddings(frozen, batch)
        return (1 - F.cosine_similarity(sentence_embeddings(model, batch), target, dim=-1)).mean()

    return loss


def embedding_similarity(
    teacher: nn.Module, copy_teacher: bool = True
) -> Callable[[nn.Module, Batch], tuple[float, int]]:
    """A metric for ``evaluate``: summed cosine similarity to ``teacher``'s embeddings."""
    frozen = frozen_copy(teacher) if copy_teacher else teacher

    def metric(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> tuple[float, int]:
        with torch.no_grad():
            target = sentence_embeddings(frozen, batch)
            similarity = F.cosine_similarity(sentence_embeddings(model, batch), target, dim=-1)
        return float(similarity.sum()), similarity.numel()

    return metric
