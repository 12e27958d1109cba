"""Running a model for measurement without changing it: eval mode, put back exactly after."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode inside; afterwards every submodule has its own earlier mode back (a model in
    training with a frozen BatchNorm stays that way), even when the block raises."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes.items():  # each its own: train() would recurse
            module.training = training
