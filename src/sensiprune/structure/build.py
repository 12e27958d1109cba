"""The dependency graph of a model, built from validated example inputs."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Collection, Iterable, Iterator

import torch
from torch import nn

from sensiprune.structure import adapters
from sensiprune.structure.graph import DependencyGraph, build_graph
from sensiprune.structure.inputs import example_arguments


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Hold off Python's cyclic garbage collector while a graph is built or cut. A graph
    makes an object per channel group, and once torch is imported a full collection walks
    millions of objects: it landed inside a prune often and made it take 4x longer. Nothing
    made here forms a cycle, and the collector runs again as usual afterwards."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@paused_gc()
def build(
    model: nn.Module,
    example_inputs: object,
    blocks: list[adapters.Block] | None = None,
    kinds: Collection[str] = (),
    data: Iterable[object] | None = None,
    pin_fixed: bool = False,
) -> tuple[DependencyGraph, list[torch.Tensor]]:
    """Validate example_inputs at the edge (see inputs.example_arguments: without them, the
    first batch of ``data``) and build the dependency graph; ``blocks`` are the model's known
    transformer blocks when the caller has already looked for them, and ``kinds`` the budget
    keys that stand for all of them (see adapters.build_graph)."""
    inputs = example_arguments(model, example_inputs, data)
    if blocks is None:
        blocks = adapters.find_blocks(model)  # known transformer layouts need no tracing
    if blocks:
        return adapters.build_graph(model, blocks, inputs, kinds), inputs
    return build_graph(model, inputs, pin_fixed), inputs
