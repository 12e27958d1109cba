"""Running a model for measurement without changing it: eval mode, put back exactly after."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode inside; afterwards every submodule has its own earlier mode back (a model in
    training with a frozen BatchNorm stays that way), even when the block raises."""
    training = [module for module in model.modules() if module.training]
    for module in training:  # what eval() does, without touching modules already in eval
        module.training = False
    try:
        yield model
    finally:
        for module in training:  # each its own: train() would recurse
            module.training = True
