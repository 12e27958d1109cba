"""`sensiprune compress RECIPE`: the recipe's model compressed to ``compress.target`` with
:func:`sensiprune.compress`, saved, and reported (before and after, the budget on its curves,
the prediction against the measured drop, the path of each step, the latency table)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from sensiprune import distributed
from sensiprune.compress import SPEED_TOLERANCE, CompressResult, compress
from sensiprune.errors import SensipruneError
from sensiprune.io.atomic import atomic_write_bytes
from sensiprune.io.saving import save
from sensiprune.report import plot_sensitivity, plot_trajectory
from sensiprune.report.document import Document, Image, Table
from sensiprune.runs.recipe import Recipe, load_recipe
from sensiprune.runs.runner import MODEL_DIR, PruningRun
from sensiprune.speed_goal import SpeedCandidate


def run_compression(
    recipe_path: str | Path, restart: bool = False, show_progress: bool = True
) -> Path:
    """Compress, save and report; returns the markdown report's path."""
    recipe = load_recipe(recipe_path)
    spec = recipe.compress
    if spec.target is None:
        raise SensipruneError(
            f"{recipe_path}: sensiprune compress needs a goal: add "
            "`compress: {target: {params: 0.1}}` (or bytes, flops, speedup or max_drop)"
        )
    with PruningRun(recipe, Path(recipe_path), restart, show_progress) as run:
        model = copy.deepcopy(run.dense_model())
        result = compress(
            model, run.train, run.data.validation, spec.target, test_data=run.data.test,
            criterion=spec.criterion, folds=spec.folds, steps=spec.steps,
            epochs_per_step=spec.epochs_per_step, lr=recipe.finetune.optimizer.lr,
            metric=run.metric, loss_fn=run.loss_fn, example_inputs=run.inputs,
            ignore=recipe.prune.ignore, show_progress=show_progress, round_to=spec.round_to,
            latency_cache=spec.latency_cache,
        )  # fmt: skip
        if not distributed.is_main():
            return run.out / "compress.md"
        save(model, run.out / MODEL_DIR)
        atomic_write_bytes(
            run.out / "compress.json", json.dumps(_as_json(result), indent=1).encode()
        )
        held_out = "test" if run.data.test is not None else "validation"
        plot_sensitivity(result.table, run.out / "sensitivity.png", result.budget)
        path = [("dense", result.table.baseline, 1.0, 1.0)] + [
            (str(s.step), s.metric, s.params_kept, s.flops_kept) for s in result.steps
        ]
        plot_trajectory(path, result.table.baseline, run.out / "trajectory.png")
        markdown, _ = _document(recipe, result, held_out).write(run.out, "compress")
        return markdown


def _as_json(result: CompressResult) -> dict:
    lut = result.latency_table
    return {
        **{k: v for k, v in vars(result).items() if k != "table"},
        "steps": [vars(step) for step in result.steps],
        "latency_table": vars(lut) if lut is not None else None,
        "speed_candidates": [
            {**vars(c), "target": {k: v for k, v in c.target.items() if k != "latency"}}
            for c in result.speed_candidates
        ],  # the latency target's table is latency_table
    }


def _candidate_row(candidate: SpeedCandidate) -> list[str]:
    tried = "not tried" if candidate.metric is None else f"{candidate.metric:.4f}"
    counts = "any" if candidate.round_to == 1 else f"multiples of {candidate.round_to}"
    return [candidate.allocated_to, counts, f"{candidate.speedup:.2f}x", tried]


def _document(recipe: Recipe, result: CompressResult, held_out: str) -> Document:
    doc = Document(f"sensiprune compress: {recipe.output}")
    doc.add("Result", f"```\n{result}\n```")
    doc.add(
        "Before and after",
        f"Metric on the {held_out} split; latency: median seconds of one forward pass on the "
        "example batch, and the speed-up measured with the two models timed in alternation.",
        Table(
            ["", "metric", "parameters", "FLOPs", "file bytes", "latency (ms)"],
            [
                [
                    "dense",
                    f"{result.dense_metric:.4f}",
                    "100%",
                    "100%",
                    "100%",
                    f"{1e3 * result.dense_latency:.2f}",
                ],
                [
                    "compressed",
                    f"{result.metric:.4f}",
                    f"{result.params_kept:.1%}",
                    f"{result.flops_kept:.1%}",
                    f"{result.bytes_kept:.1%}",
                    f"{1e3 * result.latency:.2f} ({result.speedup:.2f}x faster)",
                ],
            ],
        ),
    )
    doc.add(
        "Budget",
        f"Per layer, allocated from the sensitivity curves of the validation split and "
        f"cross-validated there; the {held_out} split measured the drop."
        + (
            " The run stopped short of this budget at the drop bound: the steps below say how "
            "far it went."
            if result.stopped_short
            else ""
        ),
        Table(
            ["layer", "sparsity"],
            [[name, f"{value:.1%}"] for name, value in sorted(result.budget.items())],
        ),
        Image("sensitivity.png", "metric with one layer pruned at a time, and the thresholds"),
    )
    doc.add(
        "Steps",
        Image("trajectory.png", "validation metric and what is kept, step by step"),
        Table(
            ["step", "parameters kept", "FLOPs kept", "validation metric"],
            [
                [str(s.step), f"{s.params_kept:.1%}", f"{s.flops_kept:.1%}", f"{s.metric:.4f}"]
                for s in result.steps
            ],
        ),
    )
    if result.latency_table is not None:
        lut = result.latency_table
        doc.add(
            "Allocations calibrated to the goal",
            f"Each way of allocating the channels, its fraction corrected until a pruned copy "
            f"measured within {SPEED_TOLERANCE:.0%} of the goal against the dense model; where "
            "several did, each was pruned and briefly fine-tuned, and the most accurate on the "
            "validation data kept (the first row).",
            Table(
                ["allocated to", "channel counts", "speed-up", "validation metric of trial"],
                [_candidate_row(c) for c in result.speed_candidates],
            ),
        )
        doc.add(
            "Latency table",
            f"Seconds each family saves alone at each sparsity of its channels, measured on "
            f"{lut.device} (dense: {1e3 * lut.total:.2f} ms): what the latency allocation "
            "is allocated against.",
            Table(
                ["family", *(f"{f:.0%}" for f in lut.fractions)],
                [
                    [name, *(f"{1e3 * v:.2f} ms" for v in values)]
                    for name, values in lut.saved.items()
                ],
            ),
        )
    return doc
