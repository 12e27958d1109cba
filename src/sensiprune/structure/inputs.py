"""Example inputs the way the ecosystem passes them, turned into positional arguments.

Structured pruning runs the model once to trace it and once more to check the cut. Users hold
inputs as a tensor, a tuple of tensors, a dict of keyword arguments (a tokenizer's output,
``model(**batch)``) or a tuple of positional tensors followed by such a dict; or they only
have batches. Every form is bound to ``model.forward``'s signature here and becomes one
positional list, with the forward's own defaults filling the gaps, so the tracer and every
later forward call see the same thing.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from sensiprune.errors import SensipruneError

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def example_arguments(
    model: nn.Module,
    example_inputs: object,
    data: Iterable[Any] | None = None,
    needed_by: str = "structured=True",
) -> list[Any]:
    """The positional arguments of one forward call: ``example_inputs`` as given, else the
    inputs of the first batch of ``data`` (its first element, or the whole dict).
    ``needed_by`` names what asked for them, in the error when there are none."""
    if example_inputs is None:
        example_inputs = _first_batch_inputs(data, needed_by)
    args, kwargs = _split(example_inputs)
    if not kwargs:
        return list(args)
    return _bound(model, args, kwargs)


def _first_batch_inputs(data: Iterable[Any] | None, needed_by: str) -> object:
    batch = next(iter(data), None) if data is not None else None
    if batch is None:
        raise SensipruneError(
            f"{needed_by} needs example_inputs: a tensor, a tuple of tensors or a dict of "
            "keyword arguments the model accepts (e.g. one batch), or data to take it from"
        )
    if isinstance(batch, Mapping):
        return batch
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def _split(example_inputs: object) -> tuple[tuple, dict]:
    if isinstance(example_inputs, Mapping):
        args, kwargs = (), dict(example_inputs)
    elif isinstance(example_inputs, (tuple, list)):
        items = list(example_inputs)
        kwargs = dict(items.pop()) if items and isinstance(items[-1], Mapping) else {}
        args = tuple(items)
    else:
        args, kwargs = (example_inputs,), {}
    if not all(isinstance(x, torch.Tensor) for x in args):
        raise SensipruneError(
            "example_inputs must be a tensor, a tuple of tensors, a dict of keyword arguments, "
            "or a tuple of tensors followed by such a dict"
        )
    if not all(isinstance(k, str) for k in kwargs):
        raise SensipruneError("example_inputs: the keys of a dict of inputs must be strings")
    return args, kwargs


def _bound(model: nn.Module, args: tuple, kwargs: dict) -> list[Any]:
    """Keyword arguments placed in forward's positional order, defaults in the gaps."""
    signature = inspect.signature(model.forward)
    try:
        bound = signature.bind_partial(*args, **kwargs)
    except TypeError as exc:
        raise SensipruneError(
            f"example_inputs do not fit {type(model).__name__}.forward: {exc}; pass the "
            "names its forward takes"
        ) from exc
    positional = [p for p in signature.parameters.values() if p.kind in _POSITIONAL]
    given = [i for i, p in enumerate(positional) if p.name in bound.arguments]
    keyword_only = set(bound.arguments) - {p.name for p in positional}
    if keyword_only:
        raise SensipruneError(
            f"example_inputs: {', '.join(sorted(keyword_only))} can only be passed by keyword "
            f"to {type(model).__name__}.forward, which tracing cannot do; wrap the model in a "
            "module whose forward takes them by position"
        )
    values = []
    for param in positional[: max(given) + 1]:
        if param.name in bound.arguments:
            values.append(bound.arguments[param.name])
        elif param.default is inspect.Parameter.empty:
            raise SensipruneError(
                f"example_inputs lack {param.name!r}, which {type(model).__name__}.forward "
                "needs before the arguments given"
            )
        else:
            values.append(param.default)
    return values
