"""Accuracy-vs-sparsity plots, one line per criterion."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt

from ..atomic import atomic_write_bytes
from ..compare import SweepPoint


def plot_sweep(points: Sequence[SweepPoint], dense: dict[str, float], path: str | Path) -> Path:
    """One row of panels per model: one-shot, and fine-tuned when there is fine-tuning."""
    models = list(dict.fromkeys(p.model for p in points))
    tuned = any(p.finetuned is not None for p in points)
    columns = 2 if tuned else 1
    fig, axes = plt.subplots(
        len(models), columns, figsize=(6 * columns, 4 * len(models)), squeeze=False
    )
    for row, model in enumerate(models):
        mine = [p for p in points if p.model == model]
        for col in range(columns):
            ax = axes[row][col]
            for criterion in dict.fromkeys(p.criterion for p in mine):
                line = sorted(
                    (p for p in mine if p.criterion == criterion), key=lambda p: p.sparsity
                )
                values = [p.one_shot if col == 0 else p.finetuned for p in line]
                ax.plot([p.sparsity * 100 for p in line], values, marker="o", label=criterion)
            ax.axhline(dense[model], color="black", linestyle="--", linewidth=1, label="dense")
            ax.set_title(f"{model}: {'one-shot' if col == 0 else 'after fine-tuning'}")
            ax.set_xlabel("sparsity of prunable weights (%)")
            ax.set_ylabel("test accuracy")
            ax.set_ylim(0, 1.02)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)
