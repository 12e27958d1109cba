"""Markdown tables a person can read in a terminal or on a code host."""

from __future__ import annotations

from collections.abc import Sequence

from sensiprune.analysis.compare import SweepPoint
from sensiprune.report.document import Table


def sweep_table(points: Sequence[SweepPoint], model: str, dense: float) -> str:
    """The caption and :func:`sweep_rows` of one model, as markdown."""
    tuned = any(p.finetuned is not None for p in points if p.model == model)
    cell_note = "one-shot / fine-tuned" if tuned else "one-shot"
    caption = f"**{model}** — test accuracy ({cell_note}); dense: {dense:.3f}"
    return f"{caption}\n\n{sweep_rows(points, model).markdown()}"


def sweep_rows(points: Sequence[SweepPoint], model: str) -> Table:
    """Criteria as rows, sparsities as columns; each cell 'one-shot / fine-tuned', the best
    of each column in bold."""
    mine = [p for p in points if p.model == model]
    sparsities = sorted({p.sparsity for p in mine})
    best = {s: max(_key(p) for p in mine if p.sparsity == s) for s in sparsities}
    rows = []
    for criterion in dict.fromkeys(p.criterion for p in mine):
        row = {p.sparsity: p for p in mine if p.criterion == criterion}
        cells = []
        for s in sparsities:
            point = row[s]
            text = f"{point.one_shot:.3f}"
            if point.finetuned is not None:
                text += f" / {point.finetuned:.3f}"
            cells.append(f"**{text}**" if _key(point) == best[s] else text)
        seconds = next(iter(row.values())).scoring_seconds
        rows.append([criterion, *cells, f"{seconds:.2f}"])
    return Table(["criterion", *[f"{s:.0%}" for s in sparsities], "scoring s"], rows)


def _key(point: SweepPoint) -> float:
    return point.finetuned if point.finetuned is not None else point.one_shot
