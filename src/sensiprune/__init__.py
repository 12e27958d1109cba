"""sensiprune: sensitivity-based pruning of PyTorch models."""

from sensiprune.analysis.sensitivity import SensitivityTable, sensitivity
from sensiprune.analysis.validation import CrossValidation, cross_validate
from sensiprune.apply.masks import get_masks, make_permanent
from sensiprune.apply.sparse_export import SparseExport, export_sparse
from sensiprune.compress import CompressResult, compress
from sensiprune.criteria import available as available_criteria
from sensiprune.errors import SensipruneError
from sensiprune.io.saving import load, save
from sensiprune.pruning import PruneResult, iterative_prune, prune, score
from sensiprune.runs.train import FinetuneResult, evaluate, finetune
from sensiprune.selection.allocation import Budget, allocate

__all__ = [
    "Budget",
    "CompressResult",
    "CrossValidation",
    "FinetuneResult",
    "PruneResult",
    "SensipruneError",
    "SensitivityTable",
    "SparseExport",
    "allocate",
    "available_criteria",
    "compress",
    "cross_validate",
    "evaluate",
    "export_sparse",
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
