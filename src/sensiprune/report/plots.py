"""Plots: accuracy vs sparsity per criterion, per-layer sensitivity with its budget, and the
path of a prune / fine-tune run."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt

from sensiprune.analysis.compare import SweepPoint
from sensiprune.analysis.sensitivity import SensitivityTable
from sensiprune.io.atomic import atomic_write_bytes


def plot_sweep(points: Sequence[SweepPoint], dense: dict[str, float], path: str | Path) -> Path:
    """One row of panels per model: one-shot, and fine-tuned when there is fine-tuning."""
    models = list(dict.fromkeys(p.model for p in points))
    criteria = list(dict.fromkeys(p.criterion for p in points))  # one style each, everywhere
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
                ax.plot([p.sparsity * 100 for p in line], values, label=criterion,
                        **series_style(criteria.index(criterion), len(criteria)))  # fmt: skip
            ax.axhline(dense[model], color="black", linestyle="--", linewidth=1, label="dense")
            ax.set_title(f"{model}: {'one-shot' if col == 0 else 'after fine-tuning'}")
            ax.set_xlabel("sparsity of prunable weights (%)")
            ax.set_ylabel("test accuracy")
            ax.set_ylim(0, 1.02)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="lower left")
    return save_figure(fig, path)


def plot_sensitivity(
    table: SensitivityTable, path: str | Path, budget: Mapping[str, float] | None = None
) -> Path:
    """Per-layer sensitivity curves; with a budget, the chosen sparsity per layer as bars."""
    columns = 2 if budget is not None else 1
    fig, axes = plt.subplots(1, columns, figsize=(6.5 * columns, 4.5), squeeze=False)
    curves = axes[0][0]
    for i, (name, values) in enumerate(zip(table.layers, table.values)):
        curves.plot([s * 100 for s in table.sparsities], values, label=name,
                    **series_style(i, len(table.layers)))  # fmt: skip
    curves.axhline(table.baseline, color="black", linestyle="--", linewidth=1, label="unpruned")
    curves.set_title(f"one layer pruned at a time ({table.criterion})")
    curves.set_xlabel("sparsity of that layer (%)")
    curves.set_ylabel("metric")
    curves.grid(alpha=0.3)
    curves.legend(fontsize=7, loc="lower left")
    if budget is not None:
        bars = axes[0][1]
        bars.barh(list(table.layers), [100 * budget.get(n, 0.0) for n in table.layers])
        bars.invert_yaxis()
        bars.set_xlim(0, 100)
        bars.set_xlabel("allocated sparsity (%)")
        bars.set_title("budget per layer")
        bars.grid(alpha=0.3, axis="x")
    return save_figure(fig, path)


def plot_trajectory(
    steps: Sequence[tuple[str, float, float, float]], dense_metric: float, path: str | Path
) -> Path:
    """The metric after each step, against what is kept of the parameters and FLOPs: each
    step is (label, metric, parameters kept, FLOPs kept), fractions of the dense model."""
    fig, metric = plt.subplots(figsize=(7, 4))
    x = range(len(steps))
    labels = [label for label, *_ in steps]
    metric.plot(x, [s[1] for s in steps], marker="o", color="black", label="validation metric")
    metric.axhline(dense_metric, color="black", linestyle="--", linewidth=1, label="dense")
    metric.set_xticks(list(x), labels)
    metric.set_xlabel("step")
    metric.set_ylabel("validation metric")
    kept = metric.twinx()
    kept.plot(x, [100 * s[2] for s in steps], marker="s", color="tab:blue", label="parameters")
    kept.plot(x, [100 * s[3] for s in steps], marker="^", color="tab:red", label="FLOPs")
    kept.set_ylabel("kept (% of dense)")
    kept.set_ylim(0, 105)
    lines = metric.get_legend_handles_labels()
    more = kept.get_legend_handles_labels()
    metric.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8, loc="lower left")
    metric.grid(alpha=0.3)
    return save_figure(fig, path)


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")


def series_style(index: int, count: int) -> dict[str, object]:
    """A colour and a marker of their own for series ``index`` of ``count``: matplotlib's
    default cycle has ten colours, and eleven criteria would share one."""
    colours = plt.get_cmap("tab10" if count <= 10 else "tab20" if count <= 20 else "turbo")
    colour = colours(index % 20) if count <= 20 else colours(index / max(count - 1, 1))
    return {"color": colour, "marker": MARKERS[index % len(MARKERS)]}


def save_figure(fig: plt.Figure, path: str | Path) -> Path:
    """Render to memory, then write atomically: a reader never sees half a PNG."""
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)
