"""The report of a recipe run, rebuilt at any time from the files the run left behind."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from sensiprune.errors import SensipruneError
from sensiprune.report.document import Document, Image, Table
from sensiprune.report.plots import save_figure

RESULTS_FILE = "results.json"
METRICS_FILE = "metrics.jsonl"


def write_run_report(run_dir: str | Path) -> Path:
    """Write report.md, report.html and their plots from results.json and metrics.jsonl."""
    run_dir = Path(run_dir)
    results, records = _read(run_dir)
    try:
        return _write(run_dir, results, records)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise SensipruneError(
            f"{run_dir / RESULTS_FILE} or {METRICS_FILE} is not what `sensiprune prune` writes "
            f"({type(exc).__name__}: {exc}): rerun the recipe to write them again"
        ) from exc


def _write(run_dir: Path, results: dict[str, Any], records: list[dict[str, Any]]) -> Path:
    dense, pruned, recipe = results["dense"], results["pruned"], results["recipe"]
    doc = Document(f"sensiprune run: {recipe['output']}")
    doc.add("Result", _summary(dense, pruned), _settings(recipe))
    if records:
        _plot_stages(records, dense, run_dir / "stages.png")
        doc.add(
            "Stages",
            Table(
                ["stage", "train loss", "validation", "weights left", "compression", "seconds"],
                [_stage_row(r) for r in records],
            ),
            Image("stages.png", "validation metric and compression after every stage"),
        )
    layers = results["layers"]
    if layers:
        _plot_layers(layers, run_dir / "layers.png")
        doc.add(
            "Weights left per layer",
            Table(
                ["layer", "weights", "left", "left %"],
                [[x["name"], f"{x['dense']:,}", f"{x['kept']:,}", _percent(x)] for x in layers],
            ),
            Image("layers.png", "share of each layer's weights left after pruning"),
        )
    markdown, _ = doc.write(run_dir)
    return markdown


def _read(run_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    path = run_dir / RESULTS_FILE
    if not run_dir.is_dir():
        raise SensipruneError(
            f"{run_dir} is not a directory: pass the output directory of a `sensiprune prune` run"
        )
    if not path.is_file():
        raise SensipruneError(
            f"{run_dir} has no {RESULTS_FILE}: the run has not finished "
            "(rerun `sensiprune prune RECIPE` to resume it)"
        )
    try:
        results = json.loads(path.read_text())
        log = run_dir / METRICS_FILE
        records = (
            [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
            if log.is_file()
            else []
        )
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SensipruneError(f"{run_dir}: a results file is corrupt: {exc}") from exc
    if not isinstance(results, dict) or not all(isinstance(r, dict) for r in records):
        raise SensipruneError(
            f"{path} or {METRICS_FILE} does not hold JSON objects: rerun the recipe to write them"
        )
    return results, records


def _summary(dense: dict, pruned: dict) -> Table:
    rows = [
        ["validation metric", _num(dense["val"]), _num(pruned["val"]), _delta(dense, pruned, "val")]
    ]
    if pruned.get("test") is not None:
        rows.append(
            [
                "test metric",
                _num(dense["test"]),
                _num(pruned["test"]),
                _delta(dense, pruned, "test"),
            ]
        )
    rows.append(
        [
            "weights (nonzero)",
            f"{dense['params']:,}",
            f"{pruned['params']:,}",
            _ratio(dense, pruned, "params"),
        ]
    )
    rows.append(
        [
            "FLOPs per sample (pruned weights skipped)",
            f"{dense['flops']:,}",
            f"{pruned['flops']:,}",
            _ratio(dense, pruned, "flops"),
        ]
    )
    rows.append(
        [
            "FLOPs per sample (as run, dense kernels)",
            f"{dense['flops']:,}",
            f"{pruned['flops_dense_kernels']:,}",
            f"{dense['flops'] / max(pruned['flops_dense_kernels'], 1):.2f}x fewer",
        ]
    )
    if "latency_s" in pruned and "latency_s" in dense:
        rows.append(
            [
                f"median latency (ms, batch of {pruned.get('latency_batch', '?')})",
                f"{dense['latency_s'] * 1e3:.3f}",
                f"{pruned['latency_s'] * 1e3:.3f}",
                f"{dense['latency_s'] / max(pruned['latency_s'], 1e-12):.2f}x faster",
            ]
        )
    return Table(["", "dense", "pruned", "change"], rows)


def _settings(recipe: dict) -> str:
    prune, schedule, tune = recipe["prune"], recipe["schedule"], recipe["finetune"]
    target = ", ".join(f"{k} {v}" for k, v in prune["target"].items() if v is not None)
    kind = "structured (layers shrink)" if prune["structured"] else "unstructured (masks)"
    return (
        f"Criterion `{prune['criterion']}`, {kind}, target {target}; schedule "
        f"`{schedule['kind']}` in {schedule['steps']} step(s), {tune['epochs']} fine-tuning "
        f"epoch(s) per step with {tune['optimizer']['name']} at lr {tune['optimizer']['lr']}. "
        "The test split is used for these final numbers only. Latency is measured side by "
        "side at the end of the run; masks alone do not make dense kernels faster."
    )


def _stage_row(record: dict) -> list[str]:
    loss = record.get("train_loss")
    return [
        record["stage"],
        f"{loss:.4f}" if loss is not None else "",
        _num(record["val"]),
        f"{record['params']:,}",
        f"{record['compression']:.2f}x",
        f"{record['seconds']:.2f}",
    ]


def _plot_stages(records: list[dict], dense: dict, path: Path) -> None:
    fig, metric = plt.subplots(figsize=(8, 4))
    x = range(1, len(records) + 1)
    metric.plot(x, [r["val"] for r in records], marker="o", label="validation metric")
    metric.axhline(dense["val"], color="black", linestyle="--", linewidth=1, label="dense")
    metric.set_xlabel("stage")
    metric.set_ylabel("validation metric")
    metric.set_xticks(list(x), [r["stage"] for r in records], rotation=60, fontsize=7)
    compression = metric.twinx()
    compression.plot(x, [r["compression"] for r in records], color="tab:red", marker=".")
    compression.set_ylabel("compression (x fewer weights)", color="tab:red")
    metric.legend(loc="lower left", fontsize=8)
    metric.grid(alpha=0.3)
    save_figure(fig, path)


def _plot_layers(layers: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(layers) + 1.5))
    ax.barh([x["name"] for x in layers], [100 * x["kept"] / max(x["dense"], 1) for x in layers])
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("weights left (%)")
    ax.grid(alpha=0.3, axis="x")
    save_figure(fig, path)


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def _delta(dense: dict, pruned: dict, key: str) -> str:
    return f"{pruned[key] - dense[key]:+.4f}"


def _ratio(dense: dict, pruned: dict, key: str) -> str:
    return f"{dense[key] / max(pruned[key], 1):.2f}x fewer"


def _percent(layer: dict) -> str:
    return f"{100 * layer['kept'] / max(layer['dense'], 1):.1f}"
