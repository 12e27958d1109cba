"""sensiprune: sensitivity-based pruning of PyTorch models."""

from .criteria import available as available_criteria
from .errors import SensipruneError
from .masks import get_masks, make_permanent
from .pruning import PruneResult, iterative_prune, prune, score
from .saving import load, save
from .sensitivity import Budget, SensitivityTable, allocate, sensitivity
from .train import FinetuneResult, evaluate, finetune
from .validation import CrossValidation, cross_validate

__all__ = [
    "Budget",
    "CrossValidation",
    "FinetuneResult",
    "PruneResult",
    "SensipruneError",
    "SensitivityTable",
    "allocate",
    "available_criteria",
    "cross_validate",
    "evaluate",
    "finetune",
    "get_masks",
    "iterative_prune",
    "load",
    "make_permanent",
    "prune",
    "save",
    "score",
    "sensitivity",
]
__version__ = "0.1.0"
