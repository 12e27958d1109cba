"""One-shot unstructured pruning of a stack of blocks (a transformer's layers), one block at a
time, as SparseGPT and Wanda prune language models.

Scoring every layer at once holds every layer's statistics at once: for OBS, a Hessian per
layer, gigabytes for a model of a billion parameters. Here the calibration inputs are caught
where they enter the first block; each block collects its own layers' statistics from them, is
pruned, and turns them into the next block's inputs. Peak memory is the model plus one block's
inputs and statistics, and every block is fitted to the inputs the pruned blocks before it
give, as it will see them when the model runs.

It applies where a criterion scores from the inputs of the layers it prunes alone (OBS,
activation), every layer's share is its own (``scope="layer"`` or ``"row"``, a per-layer budget
or an N:M pattern), and the blocks pass one stream from each to the next: that is checked on
the first batch, where every block must get the previous block's output and the first block's
other arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from sensiprune import criteria, memory
from sensiprune.apply import masks
from sensiprune.criteria.base import ScoringContext
from sensiprune.criteria.stats import ParamStats, Stat, collect
from sensiprune.data import Batch, LossFn, default_loss
from sensiprune.errors import SensipruneError
from sensiprune.modes import eval_mode
from sensiprune.options import PruneOptions
from sensiprune.progress import progress
from sensiprune.selection.choice import choose
from sensiprune.targets import Target

INPUT_STATS = frozenset({Stat.INPUT_RMS, Stat.INPUT_COV})


@dataclass
class BlockCall:
    """The arguments of one call of a block; ``stream`` says which one carries the hidden
    states from block to block (an index into ``args``, or a keyword)."""

    args: list[Any]
    kwargs: dict[str, Any]
    stream: int | str = 0

    def run(self, block: nn.Module) -> Any:
        return block(*self.args, **self.kwargs)

    def fed(self, hidden: torch.Tensor) -> BlockCall:
        """The same call with ``hidden`` as its stream."""
        if isinstance(self.stream, int):
            args = list(self.args)
            args[self.stream] = hidden
            return replace(self, args=args)
        return replace(self, kwargs={**self.kwargs, self.stream: hidden})

    @property
    def hidden(self) -> torch.Tensor:
        return self.args[self.stream] if isinstance(self.stream, int) else self.kwargs[self.stream]


class _Caught(Exception):
    """Raised by the hook on the first block: the rest of the model need not run."""


class _NotChained(SensipruneError):
    """The blocks do not pass one stream from each to the next."""


def why_not(
    model: nn.Module,
    targets: Mapping[str, Target],
    sparsity: object,
    options: PruneOptions,
) -> str | None:
    """Why the model cannot be pruned block by block with these settings (None: it can)."""
    crit = criteria.get(options.criterion)
    if options.structured is not None or options.steps != 1:
        return "block by block prunes single weights in one step (structured=False, steps=1)"
    if not crit.needs_data or crit.measures_loss or not crit.needs <= INPUT_STATS:
        return (
            f"criterion {crit.name!r} does not score from the inputs of the layers it prunes "
            "alone (block by block takes obs or activation)"
        )
    if not options.shares_per_layer(sparsity):
        return f"scope {options.scope!r} does not give every layer its own share: pass 'layer'"
    if block_stack(model, targets) is None:
        return "the model has no stack of blocks (a ModuleList of two or more alike modules)"
    return None


def block_stack(
    model: nn.Module, targets: Mapping[str, Target]
) -> list[tuple[str, nn.Module]] | None:
    """The ModuleList of two or more modules of one type that holds the most targets, as
    (name, block) pairs."""
    best: tuple[int, list[tuple[str, nn.Module]]] | None = None
    owners = {id(t.module) for t in targets.values()}
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) < 2:
            continue
        if len({type(block) for block in module}) != 1:
            continue
        held = sum(1 for block in module for m in block.modules() if id(m) in owners)
        if held and (best is None or held > best[0]):
            prefix = f"{name}." if name else ""
            best = (held, [(f"{prefix}{i}", block) for i, block in enumerate(module)])
    return None if best is None else best[1]


def prune_blockwise(
    model: nn.Module,
    targets: dict[str, Target],
    sparsity: object,
    options: PruneOptions,
    batches: Sequence[Batch],
    loss_fn: LossFn | None,
    prune_outside: Callable[[dict[str, Target]], None],
) -> bool:
    """Prune the targets inside the stack of blocks, block after block, in place; those
    outside it go to ``prune_outside``: the ones the model runs before the stack first (the
    blocks then see them pruned), the rest (an LM head) last. Returns False, having changed
    nothing, where the blocks turn out not to form a chain and ``options.blockwise`` is None
    (the caller then prunes the whole model as usual)."""
    crit = criteria.get(options.criterion)
    blocks = block_stack(model, targets)
    if blocks is None:
        raise SensipruneError(why_not(model, targets, sparsity, options) or "no blocks")
    loss_fn = loss_fn or default_loss
    per_block = [_local_targets(name, block, targets) for name, block in blocks]
    held = {n for local in per_block for n in local.values()}
    outside = {n: t for n, t in targets.items() if n not in held}
    with eval_mode(model), torch.no_grad(), _no_cache(model):
        try:
            stream, first = _chain(model, [b for _, b in blocks], outside, batches[0], loss_fn)
        except _NotChained:
            if options.blockwise:
                raise
            return False
    if first:
        prune_outside({n: outside.pop(n) for n in first})
    with eval_mode(model), torch.no_grad(), _no_cache(model):
        calls = _first_calls(model, blocks[0][1], batches, loss_fn, stream)
        for index in progress(range(len(blocks)), "pruning block by block", options.show_progress):
            name, block = blocks[index]
            if per_block[index]:
                _prune_block(block, per_block[index], _share(sparsity, name), options, crit, calls)
                memory.give_back()
            calls = [call.fed(_stream_of(call.run(block))) for call in calls]
    if outside:
        prune_outside(outside)
    return True


def _local_targets(
    prefix: str, block: nn.Module, targets: Mapping[str, Target]
) -> dict[Target, str]:
    """The targets inside ``block``, named as in the block, each with its name in the model."""
    inside = {id(m) for m in block.modules()}
    start = len(prefix) + 1
    return {
        Target(t.name[start:], t.layer[start:], t.attr, t.module): name
        for name, t in targets.items()
        if id(t.module) in inside and t.layer.startswith(f"{prefix}.")
    }


def _prune_block(
    block: nn.Module,
    held: dict[Target, str],
    sparsity: object,
    options: PruneOptions,
    crit: criteria.Criterion,
    calls: list[BlockCall],
) -> None:
    """Score, select and (for OBS) compensate the targets of one block on its inputs."""
    targets = {t.name: t for t in held}
    existing = masks.masks_of(targets)
    chosen = _chosen(block, targets, sparsity, options, crit, calls, existing)
    memory.give_back()  # what scoring and ranking freed, before compensation builds its own
    if crit.compensates:
        crit.compensate_into(block, targets, chosen, existing, calls, _run_block,
                             pattern=options.nm())  # fmt: skip
    masks.apply_masks(targets, chosen)


def _chosen(
    block: nn.Module,
    targets: dict[str, Target],
    sparsity: object,
    options: PruneOptions,
    crit: criteria.Criterion,
    calls: list[BlockCall],
    existing: dict[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """The block's masks from the criterion's scores on the block's inputs, ranked one layer
    at a time (every layer's share is its own). A criterion that needs a Hessian per layer
    collects it for one layer at a time (one held, let go before compensation builds its
    own); others collect every layer's statistics in one pass."""
    if isinstance(sparsity, Mapping):  # only the layers the budget names (it names no other:
        # every name was checked against the model's targets before any block)
        targets = {n: t for n, t in targets.items() if {t.layer, n} & set(sparsity)}
    if not targets:
        return {}

    one_at_a_time = Stat.INPUT_COV in crit.needs
    shared: dict[str, ParamStats] = {}

    def scores(subset: dict[str, Target]) -> dict[str, torch.Tensor]:
        if one_at_a_time:
            stats = collect(block, subset, calls, _run_block, crit.needs, options.seed)
        else:  # small statistics (an RMS per input): every layer's from one pass
            if not shared:
                shared.update(collect(block, targets, calls, _run_block, crit.needs, options.seed))
            stats = {name: shared[name] for name in subset}
        return crit.score(ScoringContext(block, subset, calls, _run_block, stats, options.seed))

    return choose(crit, targets, sparsity, options, existing, scores)


def _share(sparsity: object, prefix: str) -> object:
    """A per-layer budget restricted to one block's layers, named as in the block; a
    fraction as it is."""
    if not isinstance(sparsity, Mapping):
        return sparsity
    start = len(prefix) + 1
    return {k[start:]: v for k, v in sparsity.items() if k.startswith(f"{prefix}.")}


def _run_block(block: nn.Module, call: BlockCall) -> torch.Tensor:
    """How statistics and compensation run a block: they read its layers' inputs, so the
    "loss" they get back is never used."""
    call.run(block)
    return torch.zeros(())


def _stream_of(output: Any) -> torch.Tensor:
    """The hidden states a block returns: the output itself, or its first element."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    first = next(iter(output.values()), None) if isinstance(output, Mapping) else None
    if isinstance(first, torch.Tensor):
        return first
    raise SensipruneError(
        f"a block returned {type(output).__name__}, not hidden states: it cannot be pruned "
        "block by block (pass blockwise=False)"
    )


def _chain(
    model: nn.Module,
    blocks: list[nn.Module],
    outside: Mapping[str, Target],
    batch: Batch,
    loss_fn: LossFn,
) -> tuple[int | str, list[str]]:
    """On one batch: which argument of a block carries the stream, once every block was seen
    to get the previous one's output and the first one's other arguments; and the targets
    outside the stack that run before it."""
    seen: list[BlockCall] = []
    ran: list[str] = []
    early = [
        t.module.register_forward_pre_hook(lambda *_, name=name: None if seen else ran.append(name))
        for name, t in outside.items()
    ]
    try:
        with _catching(blocks, seen, stop=False):
            _run_model(model, batch, loss_fn)
    finally:
        for handle in early:
            handle.remove()
    if len(seen) != len(blocks):
        raise _NotChained(
            f"{len(seen)} block calls on the first batch for {len(blocks)} blocks: the blocks "
            "do not run once each, so they cannot be pruned one by one (pass blockwise=False)"
        )
    expected = _stream_of(seen[0].run(blocks[0]))
    stream = _stream_slot(seen[0], expected)
    for index, later in enumerate(seen[1:], start=1):
        check = replace(later, stream=stream)
        close = check.hidden.shape == expected.shape and torch.allclose(
            check.hidden.float(), expected.float(), atol=1e-5
        )
        if not close or not _same_others(seen[0], check, stream):
            raise _NotChained(
                "the blocks do not form a chain (a block gets more than the previous block's "
                "output and the first block's arguments), so they cannot be pruned one by one "
                "(pass blockwise=False)"
            )
        if index < len(blocks) - 1:
            expected = _stream_of(check.run(blocks[index]))
    return stream, list(dict.fromkeys(ran))


def _first_calls(
    model: nn.Module,
    first: nn.Module,
    batches: Sequence[Batch],
    loss_fn: LossFn,
    stream: int | str,
) -> list[BlockCall]:
    """The first block's call on every batch (the rest of the model is not run)."""
    calls: list[BlockCall] = []
    for batch in batches:
        caught: list[BlockCall] = []
        with _catching([first], caught, stop=True):
            _run_model(model, batch, loss_fn)
        calls += [replace(call, stream=stream) for call in caught[:1]]
    return calls


@contextmanager
def _catching(blocks: list[nn.Module], seen: list[BlockCall], stop: bool) -> Iterator[None]:
    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        seen.append(BlockCall(list(args), dict(kwargs)))
        if stop:
            raise _Caught

    handles = [block.register_forward_pre_hook(hook, with_kwargs=True) for block in blocks]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _run_model(model: nn.Module, batch: Batch, loss_fn: LossFn) -> None:
    with suppress(_Caught):
        loss_fn(model, batch)


def _stream_slot(call: BlockCall, hidden: torch.Tensor) -> int | str:
    """Which argument of the call the block's output replaces in the next block's call: the
    first tensor of the output's shape (the hidden states)."""
    slots = [(i, a) for i, a in enumerate(call.args)] + list(call.kwargs.items())
    for slot, value in slots:
        if isinstance(value, torch.Tensor) and value.shape == hidden.shape:
            return slot
    raise _NotChained(
        "no argument of the first block has the shape of its output, so the blocks cannot be "
        "pruned one by one (pass blockwise=False)"
    )


def _same_others(first: BlockCall, call: BlockCall, stream: int | str) -> bool:
    """Whether ``call`` passes what ``first`` passed, apart from the stream."""
    if len(first.args) != len(call.args) or set(first.kwargs) != set(call.kwargs):
        return False
    pairs = [(a, b) for i, (a, b) in enumerate(zip(first.args, call.args)) if i != stream]
    pairs += [(first.kwargs[k], call.kwargs[k]) for k in first.kwargs if k != stream]
    return all(_same_value(a, b) for a, b in pairs)


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and bool(torch.equal(a, b))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b))
    return a is b or a == b


@contextmanager
def _no_cache(model: nn.Module) -> Iterator[None]:
    """A model that caches keys and values for generation (``config.use_cache``) would grow
    its cache with every replayed block: off while pruning."""
    config = getattr(model, "config", None)
    before = getattr(config, "use_cache", None)
    if before:
        config.use_cache = False
    try:
        yield
    finally:
        if before:
            config.use_cache = before
