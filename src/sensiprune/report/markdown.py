"""Markdown tables a person can read in a terminal or on a code host."""

from __future__ import annotations

from collections.abc import Sequence

from ..compare import SweepPoint


def sweep_table(points: Sequence[SweepPoint], model: str, dense: float) -> str:
    """Criteria as rows, sparsities as columns; each cell 'one-shot / fine-tuned'."""
    mine = [p for p in points if p.model == model]
    sparsities = sorted({p.sparsity for p in mine})
    criteria = list(dict.fromkeys(p.criterion for p in mine))
    tuned = any(p.finetuned is not None for p in mine)
    cell_note = "one-shot / fine-tuned" if tuned else "one-shot"
    header = "| criterion | " + " | ".join(f"{s:.0%}" for s in sparsities) + " | scoring s |"
    lines = [
        f"**{model}** — test accuracy ({cell_note}); dense: {dense:.3f}",
        "",
        header,
        "|" + "---|" * (len(sparsities) + 2),
    ]
    best = {s: max(_key(p) for p in mine if p.sparsity == s) for s in sparsities}
    for criterion in criteria:
        row = {p.sparsity: p for p in mine if p.criterion == criterion}
        cells = []
        for s in sparsities:
            point = row[s]
            text = f"{point.one_shot:.3f}"
            if point.finetuned is not None:
                text += f" / {point.finetuned:.3f}"
            cells.append(f"**{text}**" if _key(point) == best[s] else text)
        seconds = next(iter(row.values())).scoring_seconds
        lines.append(f"| {criterion} | " + " | ".join(cells) + f" | {seconds:.2f} |")
    return "\n".join(lines)


def _key(point: SweepPoint) -> float:
    return point.finetuned if point.finetuned is not None else point.one_shot
