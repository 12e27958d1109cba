"""`sensiprune compare RECIPE`: the recipe's model pruned by several criteria side by side.

Every criterion gets the same dense model, ranking (scope and normalisation), sparsities and
fine-tuning, so the chart shows what the criterion alone is worth. Magnitude and random are
the baselines to beat.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from sensiprune import distributed
from sensiprune.analysis.compare import SweepSettings, sweep
from sensiprune.io.atomic import atomic_write_bytes
from sensiprune.report import plot_sweep
from sensiprune.report.document import Document, Image
from sensiprune.report.markdown import sweep_rows
from sensiprune.runs.recipe import Recipe, load_recipe
from sensiprune.runs.runner import PruningRun
from sensiprune.runs.train import evaluate


def run_comparison(
    recipe_path: str | Path, restart: bool = False, show_progress: bool = True
) -> Path:
    """Prune copies of the dense model with each criterion; returns the markdown report."""
    recipe = load_recipe(recipe_path)
    with PruningRun(recipe, Path(recipe_path), restart, show_progress) as run:
        return _compare(recipe, run)


def _compare(recipe: Recipe, run: PruningRun) -> Path:
    dense = run.dense_model()
    spec, tune = recipe.prune, recipe.finetune
    settings = SweepSettings(
        sparsities=tuple(recipe.compare.sparsities),
        criteria=tuple(recipe.compare.criteria),
        options=spec.options(run.inputs, recipe.seed, show_progress=False),
        finetune_epochs=tune.epochs,
        score_batches=spec.score_batches,
        make_optimizer=tune.optimizer.build,
    )
    # reported on the test split when there is one: these are final numbers, nothing is chosen
    final = run.data.test if run.data.test is not None else run.data.validation
    split = "test" if run.data.test is not None else "validation"
    name = Path(recipe.output).name
    points = sweep(
        name,
        dense,
        settings,
        run.train,
        run.train,
        final,
        run.loss_fn,
        run.metric,
    )
    if not distributed.is_main():  # the pruning is shared, the writing is rank 0's
        return run.out / "comparison.md"
    baseline = evaluate(dense, final, run.metric)
    plot_sweep(points, {name: baseline}, run.out / "comparison.png")
    atomic_write_bytes(
        run.out / "comparison.json",
        json.dumps({"dense": baseline, "points": [asdict(p) for p in points]}, indent=1).encode(),
    )
    kind = "channels removed (structured)" if spec.structured else "weights masked"
    doc = Document(f"sensiprune comparison: {recipe.output}")
    doc.add(
        "Criteria side by side",
        f"{split.capitalize()} metric of the dense model: {baseline:.4f}. Each cell: one-shot "
        f"/ after {tune.epochs} fine-tuning epoch(s) ({tune.optimizer.name}, lr "
        f"{tune.optimizer.lr}); columns are the fraction of {kind}, ranked `{spec.scope}` with "
        f"`{spec.normalize}` normalisation; the best of each column in bold. Scoring time is "
        "the seconds one scoring pass took.",
        sweep_rows(points, name),
        Image("comparison.png", f"{split} metric against sparsity, one line per criterion"),
    )
    markdown, _ = doc.write(run.out, "comparison")
    return markdown
