"""The verbs: score, prune (and prune_with, its settings in one object), iterative_prune.
Validation happens here, at the edge."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn

from sensiprune import blockwise, criteria, distributed
from sensiprune.apply import masks
from sensiprune.criteria.scoring import score_targets
from sensiprune.data import Batch, LossFn, as_batches, default_loss
from sensiprune.errors import SensipruneError
from sensiprune.options import PruneOptions, StructuredOptions
from sensiprune.result import PruneResult, describe
from sensiprune.runs.train import FinetuneResult, finetune
from sensiprune.selection import unstructured as selection
from sensiprune.selection.choice import choose
from sensiprune.selection.schedule import geometric_sparsity, sparsity_at
from sensiprune.selection.unstructured import Sparsity
from sensiprune.structured import prune_structured
from sensiprune.targets import IgnoreSpec, Target, require_targets


def score(
    model: nn.Module,
    criterion: str = "taylor",
    data: Iterable[Batch] | None = None,
    loss_fn: LossFn | None = None,
    ignore: IgnoreSpec = (),
    seed: int = 0,
    show_progress: bool = False,
) -> dict[str, torch.Tensor]:
    """Importance of every prunable weight, by parameter name (higher = more important).

    Channel criteria (``taylor_fm``) give one score per output channel, under ``"layer::out"``.
    """
    crit = criteria.get(criterion)
    targets = require_targets(model, ignore)
    return score_targets(model, crit, targets, data, loss_fn, seed, show_progress)


def prune(
    model: nn.Module,
    sparsity: Sparsity,
    *,
    criterion: str = "magnitude",
    data: Iterable[Batch] | None = None,
    loss_fn: LossFn | None = None,
    scope: str = "global",
    ignore: IgnoreSpec = (),
    min_density: float = 0.01,
    normalize: str = "lamp",
    steps: int = 1,
    seed: int = 0,
    scores: Mapping[str, torch.Tensor] | None = None,
    structured: bool = False,
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...] | None = None,
    round_to: int | str = 1,
    group_reduction: str = "mean",
    show_progress: bool = False,
    pattern: str | None = None,
    blockwise: bool | None = None,
) -> PruneResult:
    """Mask the least important weights in place so that ``sparsity`` of them are zero.

    ``sparsity`` is a fraction of all prunable weights (ranked over the whole model with
    ``scope="global"``, within each layer with ``"layer"``, within each output row with
    ``"row"``) or a ``{layer_name: fraction}`` budget. Weights pruned before stay pruned.
    ``steps > 1`` gets there in geometric steps, re-scoring the masked model before each one:
    a saliency predicts the cost of removing one weight, and is far more reliable for removing
    a fraction of the weights than for removing 90% at once. ``scores`` reuses scores from
    :func:`score` (one step only). Bad input is refused before anything changes, and a
    failure while scoring (say, a NaN gradient) happens before that step's masks are applied.

    ``structured=True`` removes whole channels / neurons instead, so layers physically shrink:
    ``sparsity`` is then the fraction of channels removed from each family of coupled layers
    (``scope="layer"``) or overall (``"global"``), ``example_inputs`` is a batch the model
    accepts (for tracing), ``round_to`` keeps channel counts multiples of N (``"auto"``: of
    the channels one SIMD vector of the model's device holds, see
    :func:`sensiprune.selection.groups.vector_width`), and
    ``group_reduction`` (mean / sum / max) turns the weight scores of a channel group into one.
    In a budget, ``"heads"``, ``"query_heads"`` (inside key/value groups), ``"ffn"`` and
    ``"hidden"`` (the model dimension) stand for every transformer block sensiprune knows.
    A module in ``ignore`` keeps its output channels; its inputs may still shrink. With
    ``steps > 1`` each step removes the same fraction of the channels still there, re-scored.

    ``pattern="N:M"`` (such as ``"2:4"``, which GPUs run as semi-structured sparsity) prunes
    the N lowest-scored of every M consecutive inputs of each row instead of ranking by
    ``scope``; ``sparsity`` must then be N/M. Fine-tuning keeps the pattern (the masks hold).

    ``blockwise``: a model built on a stack of blocks (a transformer's layers) is pruned one
    block at a time, each on the inputs the pruned blocks before it give, holding one block's
    statistics at a time (see :mod:`sensiprune.blockwise`): SparseGPT's and Wanda's way with
    language models. None (default) does so where it applies (a criterion that reads layer
    inputs, such as obs or activation, and a share per layer: ``scope="layer"`` or ``"row"``,
    a budget, or a pattern); True also says why where it does not; False never does.
    """
    shape = StructuredOptions(example_inputs, round_to, group_reduction) if structured else None
    options = PruneOptions(
        criterion, scope, ignore, min_density, normalize, steps, seed, shape, show_progress,
        pattern, blockwise,
    )  # fmt: skip
    return prune_with(model, sparsity, options, data, loss_fn, scores)


def prune_with(
    model: nn.Module,
    sparsity: Sparsity,
    options: PruneOptions,
    data: Iterable[Batch] | None = None,
    loss_fn: LossFn | None = None,
    scores: Mapping[str, torch.Tensor] | None = None,
) -> PruneResult:
    """:func:`prune` with its settings in one object, as recipes, sweeps and runs carry them."""
    selection.check_sparsity(sparsity)
    geometric_sparsity(sparsity, 1, options.steps)  # validates steps
    if scores is not None and options.steps != 1:
        raise SensipruneError("scores= cannot be reused across re-scoring steps: pass steps=1")
    if scores is not None and options.blockwise:
        raise SensipruneError(
            "scores= cannot be reused block by block (each block is scored on the outputs of "
            "the pruned blocks before it): pass blockwise=None or False"
        )
    options.check()
    pattern = options.nm()
    if pattern is not None and (
        isinstance(sparsity, Mapping) or abs(sparsity - pattern[0] / pattern[1]) > 1e-9
    ):
        raise SensipruneError(
            f"pattern {options.pattern!r} prunes {pattern[0]} of every {pattern[1]} weights: "
            f"pass sparsity {pattern[0] / pattern[1]:g}, got {sparsity!r}"
        )
    if options.structured is not None:
        return prune_structured(model, sparsity, options, data, loss_fn, scores)
    return _prune_masks(model, sparsity, options, data, loss_fn, scores)


def _prune_masks(
    model: nn.Module,
    sparsity: Sparsity,
    options: PruneOptions,
    data: Iterable[Batch] | None,
    loss_fn: LossFn | None,
    scores: Mapping[str, torch.Tensor] | None,
) -> PruneResult:
    """Unstructured: score, select, (compensate), mask; in geometric steps when asked."""
    crit = criteria.get(options.criterion)
    targets = require_targets(model, options.ignore)
    if scores is not None:
        _check_scores(scores, targets)
    if crit.needs_data or crit.compensates:
        data = as_batches(data, f"data (criterion {crit.name!r} needs it)")
    params_before = sum(p.numel() for p in model.parameters())

    def outside_blocks(subset: dict[str, Target]) -> None:
        budget = _within(sparsity, subset)
        _prune_targets(model, crit, subset, budget, options, data, loss_fn, None)

    by_blocks = scores is None and _by_blocks(
        model, targets, sparsity, options, data, loss_fn, outside_blocks
    )
    if not by_blocks:
        _prune_targets(model, crit, targets, sparsity, options, data, loss_fn, scores)
    layers = masks.layer_sparsity(model, targets)
    pruned = sum(layer.numel - layer.kept for layer in layers)
    how = describe(sparsity, options.scope)
    return PruneResult(
        crit.name,
        how if options.pattern is None else f"{options.pattern} pattern",
        params_before,
        params_before - pruned,
        layers,
    )


def _prune_targets(
    model: nn.Module,
    crit: criteria.Criterion,
    targets: dict[str, Target],
    sparsity: Sparsity,
    options: PruneOptions,
    data: Iterable[Batch] | None,
    loss_fn: LossFn | None,
    scores: Mapping[str, torch.Tensor] | None,
) -> None:
    """The usual way: score, select, (compensate), mask, in ``options.steps`` steps."""
    for step in range(1, options.steps + 1):
        found: dict[str, torch.Tensor] = dict(scores or {})  # each step scores anew

        def step_scores(
            subset: dict[str, Target], found: dict[str, torch.Tensor] = found
        ) -> Mapping[str, torch.Tensor]:
            if not found:  # every target's at once: one pass of the data
                found.update(score_targets(
                    model, crit, targets, data, loss_fn, options.seed, options.show_progress
                ))  # fmt: skip
            return found

        budget = geometric_sparsity(sparsity, step, options.steps)
        chosen = choose(crit, targets, budget, options, masks.lazy_masks(model), step_scores)
        if crit.compensates:  # it picks the weights within the chosen counts, moves the rest
            assert data is not None  # a compensating criterion needs data: checked above
            crit.compensate_into(
                model, targets, chosen, masks.lazy_masks(model), list(data),
                loss_fn or default_loss, options.show_progress, options.nm(),
            )  # fmt: skip
        masks.apply_masks(targets, chosen)
        distributed.broadcast_module(model)  # rank 0 decides: the ranks never disagree


def _by_blocks(
    model: nn.Module,
    targets: dict[str, Target],
    sparsity: Sparsity,
    options: PruneOptions,
    data: Iterable[Batch] | None,
    loss_fn: LossFn | None,
    prune_outside: Callable[[dict[str, Target]], None],
) -> bool:
    """Prune block by block where that applies (``blockwise`` None: where it can; True: or
    say why not), the targets outside the stack through ``prune_outside``; returns whether
    it did."""
    if options.blockwise is False:
        return False
    reason = blockwise.why_not(model, targets, sparsity, options)
    if reason is not None:
        if options.blockwise:
            raise SensipruneError(f"blockwise=True: {reason}")
        return False
    assert data is not None  # the criterion needs data: checked above
    if options.pattern is None:  # refused before any block changes
        selection.check_shares(targets, sparsity, options.min_density)
    done = blockwise.prune_blockwise(
        model, targets, sparsity, options, list(data), loss_fn, prune_outside
    )
    if done:
        distributed.broadcast_module(model)  # rank 0 decides: the ranks never disagree
    return done


def _within(sparsity: Sparsity, targets: dict[str, Target]) -> Sparsity:
    """A per-layer budget without the layers pruned elsewhere (block by block)."""
    if not isinstance(sparsity, Mapping):
        return sparsity
    names = {t.layer for t in targets.values()} | set(targets)
    return {k: v for k, v in sparsity.items() if k in names}


def iterative_prune(
    model: nn.Module,
    sparsity: Sparsity,
    train_data: Iterable[Batch],
    criterion: str = "magnitude",
    data: Iterable[Batch] | None = None,
    steps: int = 3,
    epochs_per_step: int = 1,
    schedule: str = "cubic",
    loss_fn: LossFn | None = None,
    scope: str = "global",
    ignore: IgnoreSpec = (),
    lr: float = 1e-3,
    show_progress: bool = False,
) -> list[tuple[PruneResult, FinetuneResult]]:
    """Prune → fine-tune in ``steps`` rounds along ``schedule`` up to ``sparsity``.

    Scores are recomputed every round on ``data`` (default: the training data), so each round
    sees the model as the previous fine-tuning left it.
    """
    selection.check_sparsity(sparsity)
    sparsity_at(sparsity, 1, steps, schedule)  # validates steps and schedule before any work
    train_batches = as_batches(train_data, "train data")
    history = []
    for step in range(1, steps + 1):
        result = prune(
            model,
            sparsity_at(sparsity, step, steps, schedule),
            criterion=criterion,
            data=data if data is not None else train_batches,
            loss_fn=loss_fn,
            scope=scope,
            ignore=ignore,
            show_progress=show_progress,
        )
        tuned = finetune(
            model, train_batches, epochs_per_step, loss_fn, lr=lr, show_progress=show_progress
        )
        history.append((result, tuned))
    return history


def _check_scores(scores: Mapping[str, torch.Tensor], targets: dict[str, Target]) -> None:
    for name, target in targets.items():
        if name not in scores:
            raise SensipruneError(f"scores has no entry for {name}: score the same model first")
        if tuple(scores[name].shape) != tuple(target.param.shape):
            raise SensipruneError(
                f"scores[{name!r}] has shape {tuple(scores[name].shape)}, the weight has "
                f"{tuple(target.param.shape)}"
            )
