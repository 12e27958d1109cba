"""`sensiprune analyze RECIPE`: per-layer sensitivity, the budget it allocates, and how far
cross-validation says that budget's predicted drop can be trusted.

The curves are cached in the run directory, where a later `sensiprune prune` of the same recipe
reuses them (and the pretraining); the budget is written as ``budget.json`` for
``prune.target.budget``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from torch import nn

from sensiprune import distributed
from sensiprune.analysis.sensitivity import SensitivityTable
from sensiprune.analysis.validation import CrossValidation, cross_validate
from sensiprune.errors import SensipruneError
from sensiprune.io.atomic import atomic_write_bytes
from sensiprune.report import plot_sensitivity
from sensiprune.report.document import Document, Image, Table
from sensiprune.runs.recipe import Recipe, load_recipe
from sensiprune.runs.runner import BUDGET_FILE, PruningRun
from sensiprune.selection.allocation import Budget, allocate, warn_if_clamped

log = logging.getLogger(__name__)


def run_analysis(
    recipe_path: str | Path, restart: bool = False, show_progress: bool = True
) -> Path:
    """Measure, allocate, cross-validate and report; returns the markdown report's path."""
    recipe = load_recipe(recipe_path)
    with PruningRun(recipe, Path(recipe_path), restart, show_progress) as run:
        return _analyze(recipe, run)


def _analyze(recipe: Recipe, run: PruningRun) -> Path:
    validation = list(run.data.validation)
    folds = _folds(recipe, len(validation))
    model = run.dense_model()
    table = run.sensitivity_table(model)
    budget = _allocate(recipe, table, run.file_budget)
    warn_if_clamped(budget)
    checked = _cross_validated(recipe, run, model, validation, folds) if folds else None
    if not distributed.is_main():  # the measuring is shared, the writing is rank 0's
        return run.out / "analysis.md"
    atomic_write_bytes(run.out / BUDGET_FILE, json.dumps(dict(budget), indent=1).encode())
    plot_sensitivity(table, run.out / "sensitivity.png", budget)
    markdown, _ = _document(recipe, table, budget, checked).write(run.out, "analysis")
    return markdown


def _folds(recipe: Recipe, batches: int) -> int:
    """``analysis.folds``, fewer where a fold would hold a single validation batch: a budget
    judged on one batch says more about that batch than about the budget."""
    asked = recipe.analysis.folds if recipe.prune.target.budget is None else 0
    folds = min(asked, batches // 2)
    if asked and folds < 2:
        raise SensipruneError(
            f"analysis.folds: {asked} folds need at least 2 validation batches each, and there "
            f"are {batches}: use smaller batches, or set analysis.folds: 0"
        )
    if folds < asked:
        log.warning("cross-validating with %d folds, not %d: %d validation batches make folds "
                    "of at least 2 batches", folds, asked, batches)  # fmt: skip
    return folds


def _allocate(recipe: Recipe, table: SensitivityTable, file_budget: dict | None) -> Budget:
    target = recipe.prune.target
    if file_budget is not None:
        return Budget(file_budget)
    return allocate(
        table,
        target_sparsity=target.sparsity,
        max_drop=target.max_drop,
        target_flops=target.flops,
        min_density=recipe.prune.min_density,
    )


def _cross_validated(
    recipe: Recipe, run: PruningRun, model: nn.Module, validation: list, folds: int
) -> CrossValidation:
    spec = recipe.prune
    return cross_validate(
        model,
        validation,
        target_sparsity=spec.target.sparsity,
        max_drop=spec.target.max_drop,
        folds=folds,
        sparsities=recipe.measured_sparsities(),
        criterion=spec.criterion,
        metric=run.metric,
        loss_fn=run.loss_fn,
        target_flops=spec.target.flops,
        structured=spec.structured,
        example_inputs=run.inputs,
        ignore=spec.ignore,
    )


def _document(
    recipe: Recipe, table: SensitivityTable, budget: Budget, checked: CrossValidation | None
) -> Document:
    doc = Document(f"sensiprune analysis: {recipe.output}")
    units = "channels" if recipe.prune.structured else "weights"
    doc.add(
        "Budget",
        f"Criterion `{table.criterion}`, {units} ranked within each layer; validation metric "
        f"unpruned {table.baseline:.4f}. The allocated budget removes "
        f"{table.overall_sparsity(budget):.1%} of the analysed {units} and the curves predict a "
        f"one-shot drop (before fine-tuning) of {budget.predicted_drop:+.4f}. "
        f"Prune with it: `prune: {{target: {{budget: "
        f"{Path(recipe.output) / BUDGET_FILE}}}}}`.",
        Table(
            ["layer", "size", "allocated sparsity", "predicted drop"],
            [
                [
                    name,
                    f"{size:,}",
                    f"{budget.get(name, 0.0):.1%}",
                    f"{table.drop(i, budget.get(name, 0.0)):+.4f}",
                ]
                for i, (name, size) in enumerate(zip(table.layers, table.sizes))
            ],
        ),
        Image("sensitivity.png", "metric with one layer pruned at a time, and the budget"),
    )
    doc.add(
        "Sensitivity curves",
        Table(
            ["layer", "size", *[f"{s:.0%}" for s in table.sparsities]],
            [
                [name, f"{size:,}", *[f"{v:.4f}" for v in values]]
                for name, size, values in zip(table.layers, table.sizes, table.values)
            ],
        ),
    )
    if checked is not None:
        doc.add(
            f"{len(checked.folds)}-fold cross-validation on the validation split",
            "For each fold, curves and budget come from the other folds and the drop is "
            f"measured on the held-out fold. Held-out drop {checked.observed_mean:+.4f} ± "
            f"{checked.observed_std:.4f}. The test split is not used here.",
            Table(
                ["fold", "batches", "predicted drop", "observed drop"],
                [
                    [str(i + 1), str(len(f)), f"{p:+.4f}", f"{o:+.4f}"]
                    for i, (f, p, o) in enumerate(
                        zip(checked.folds, checked.predicted, checked.observed)
                    )
                ],
            ),
        )
    return doc
