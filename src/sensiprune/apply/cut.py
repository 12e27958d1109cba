"""Cutting chosen channel groups out of a model physically, checked by running it, and
zeroing them for a measurement without a cut."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from sensiprune.apply import surgery
from sensiprune.errors import CutRefused, SensipruneError
from sensiprune.handlers.layouts import layout_for
from sensiprune.measure import counted_forward
from sensiprune.structure import counts
from sensiprune.structure.build import paused_gc
from sensiprune.structure.channels import indices_by_slice
from sensiprune.structure.graph import DependencyGraph


@paused_gc()
def remove_groups(
    model: nn.Module,
    graph: DependencyGraph,
    removed: Sequence[int],
    example_inputs: Sequence[torch.Tensor],
    bookkeeping: Callable[[], None] | None = None,
    kept_in_step: Sequence[object] = (),
) -> int:
    """Cut the chosen groups out of ``model`` in place; returns the FLOPs afterwards.

    Sizes the model's code keeps in attributes follow the cut (see counts.py), and
    ``bookkeeping`` then brings the attributes the model's own code reads (head counts, a
    config) in step with the new shapes; it changes nothing but ``kept_in_step``. The pruned
    model is run once before returning; if it fails or its output shapes changed, every
    touched module and object gets its old state back and the error says so.
    """
    cut = indices_by_slice([graph.groups[g] for g in removed])
    modules = dict(model.named_modules())
    touched = [modules[layer] for layer in {layer for layer, _ in cut}]
    holders = counts.holders(modules, graph.counts) + list(kept_in_step)
    saved = [(thing, _snapshot(thing)) for thing in touched + holders]
    ties = surgery.tied_parameters(model)
    try:
        for (layer, role), indices in cut.items():
            module = modules[layer]
            keep = np.ones(layout_for(module, role).size(module), dtype=bool)
            keep[indices] = False
            surgery.shrink(module, role, torch.from_numpy(np.flatnonzero(keep)))
        surgery.retie(ties)
        numbers = [graph.groups[g].number for g in removed]
        cut_state = [(thing, _snapshot(thing)) for thing in holders]
        # where two attributes held a count's value, the one that counts it is found by
        # running the model with the other left as it was
        twins = counts.ambiguous(modules, graph.counts, numbers)
        refused = None
        for skip in [(), *([name] for name in twins)]:
            _restore(cut_state)
            counts.follow(modules, graph.counts, numbers, skip)
            if bookkeeping is not None:
                bookkeeping()
            try:
                return _checked_run(model, graph, example_inputs)
            except CutRefused as error:
                refused = refused or error
        raise refused
    except BaseException:
        _restore(saved)
        raise


def _checked_run(model: nn.Module, graph: DependencyGraph, example_inputs: Sequence) -> int:
    """The pruned model's FLOPs, once it has run with the output shapes it had."""
    try:
        flops, shapes = counted_forward(
            model,
            example_inputs,
            "the model does not run after structured pruning; this is a bug in sensiprune's "
            "dependency graph: please report it (the model was not modified)",
            layers_only=graph.flops_in_layers_only,
        )
    except SensipruneError as exc:
        raise CutRefused(str(exc), graph.fixed) from exc.__cause__
    if shapes != graph.output_shapes:
        raise CutRefused(
            "structured pruning would change the output shape; this is a bug in "
            "sensiprune's dependency graph: please report it (the model was not modified)",
            graph.fixed,
        )
    return flops


def _restore(saved: Sequence[tuple[object, dict]]) -> None:
    for thing, state in reversed(saved):
        thing.__dict__.clear()
        thing.__dict__.update(state)


def _snapshot(thing: object) -> dict:
    """Enough of ``thing``'s state to put it back: its attributes, and a module's own
    parameter, buffer and pre-hook tables (a cut may slice an input with a hook)."""
    state = dict(thing.__dict__)
    for key in ("_parameters", "_buffers", "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs"):
        if key in state:
            state[key] = dict(state[key])
    return state
