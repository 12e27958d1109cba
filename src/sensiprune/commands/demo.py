"""The embedded demo: prune LeNet-300-100 and a LeNet-5-style CNN on real handwritten digits.

Trains the dense models (cached in the run directory), compresses each to a size goal with
``sp.compress`` (per-layer thresholds from the sensitivity curves, cross-validated, then
pruned and fine-tuned) and the CNN to a measured speed-up, prunes them with every criterion at
several sparsities, one-shot and after the same fine-tuning budget, and writes a report.
Scores are computed on the validation split; the test split is used for reported numbers only.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from sensiprune import criteria
from sensiprune.analysis.compare import SweepPoint, SweepSettings, sweep
from sensiprune.compress import compress
from sensiprune.errors import SensipruneError
from sensiprune.io.atomic import atomic_write_bytes
from sensiprune.io.saving import load, save
from sensiprune.measure import count_parameters, speedup
from sensiprune.options import PruneOptions
from sensiprune.pruning import prune
from sensiprune.report import plot_sweep, sweep_table
from sensiprune.runs.train import evaluate, finetune
from sensiprune.zoo import DigitsSplits, LeNet5, LeNet300100, load_digits_splits

log = logging.getLogger(__name__)
MODELS: dict[str, Callable[[], nn.Module]] = {"LeNet-300-100": LeNet300100, "LeNet-5": LeNet5}
SPARSITIES = (0.5, 0.8, 0.9, 0.95, 0.98)
STRUCTURED_SPARSITY = 0.5
DENSE_EPOCHS = 40
FINETUNE_EPOCHS = 5
# a size goal per model (the fraction of the parameters kept) and the fine-tuning after it
COMPRESS_GOALS = {"LeNet-300-100": 1 / 40, "LeNet-5": 1 / 20}
COMPRESS_EPOCHS = 20
SPEED_GOAL = ("LeNet-5", 1.5)  # times faster, measured on this machine at TIMING_BATCH
TIMING_BATCH = 1024  # LeNet-5 is tiny: at small batches the call overhead is most of the time


@dataclass(frozen=True)
class DemoResult:
    report: Path
    plot: Path
    points: tuple[SweepPoint, ...]
    dense_accuracy: dict[str, float]


def run_demo(out: str | Path, seed: int = 0, quick: bool = False) -> DemoResult:
    """Run the whole demo into ``out``; ``quick`` uses fewer criteria and sparsities (tests)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SensipruneError(f"--out {out} exists and is not a directory: choose another path")
    data = load_digits_splits(seed=seed)
    settings = SweepSettings(
        sparsities=(0.5, 0.9) if quick else SPARSITIES,
        criteria=("magnitude", "obs") if quick else tuple(criteria.available(single_weights=True)),
        options=PruneOptions(seed=seed),
        finetune_epochs=1 if quick else FINETUNE_EPOCHS,
    )
    points: list[SweepPoint] = []
    dense_accuracy: dict[str, float] = {}
    sections, goals = [], []
    shrunk_rows: list[str] = []
    for name, factory in MODELS.items():
        dense = _dense_model(out / f"dense-{_slug(name)}-seed{seed}", factory, data, seed, quick)
        dense_accuracy[name] = evaluate(dense, data.test)
        log.info("%s dense test accuracy %.3f", name, dense_accuracy[name])
        goals.append(_compressed(name, dense, data, quick, {"params": COMPRESS_GOALS[name]}))
        if name == SPEED_GOAL[0]:
            goals.append(_compressed(name, dense, data, quick, {"speedup": SPEED_GOAL[1]}))
        mine = sweep(name, dense, settings, data.val, data.train, data.test)
        points += mine
        params = count_parameters(dense).total
        sections.append(
            sweep_table(mine, name, dense_accuracy[name]) + f"\n\n{params:,} parameters."
        )
        shrunk_rows.append(_shrunk_row(name, dense, data, settings.finetune_epochs))
    sections.append(_shrunk_table(shrunk_rows, settings.finetune_epochs))
    plot = plot_sweep(points, dense_accuracy, out / "accuracy_vs_sparsity.png")
    report = out / "report.md"
    atomic_write_bytes(report, _report_text(settings, goals, sections).encode())
    results = {"dense_accuracy": dense_accuracy, "points": [asdict(p) for p in points]}
    atomic_write_bytes(out / "results.json", json.dumps(results, indent=1).encode())
    return DemoResult(report, plot, tuple(points), dense_accuracy)


def _compressed(
    name: str, dense: nn.Module, data: DigitsSplits, quick: bool, target: dict[str, float]
) -> str:
    """One call with a goal: the thresholds it chose per layer (or family of channels), and
    its prediction against the drop measured on the test split. A speed goal is timed on a
    batch of training images (the test split stays for the reported numbers)."""
    model = copy.deepcopy(dense)
    speed = "speedup" in target
    timing = torch.cat([x for x, _ in data.train])[:TIMING_BATCH] if speed else None
    result = compress(
        model, data.train, data.val, target, test_data=data.test,
        criterion="magnitude" if quick else None, folds=2 if quick else 3,
        epochs_per_step=1 if quick else COMPRESS_EPOCHS, example_inputs=timing,
    )  # fmt: skip
    ((goal, value),) = target.items()
    if speed:
        reached = (
            f"{result.speedup:.2f}x faster measured at batch {TIMING_BATCH} "
            f"({1e3 * result.dense_latency:.2f} → {1e3 * result.latency:.2f} ms), "
            f"{1 / result.flops_kept:.2f}x fewer FLOPs, channels removed"
        )
    else:
        reached = f"{1 / result.params_kept:.1f}x fewer parameters"
    return "\n".join(
        [
            f"**{name}, `sp.compress(target={{'{goal}': {value:.3g}}})`**: {reached} with "
            f"{result.criterion}; test accuracy {result.dense_metric:.3f} → {result.metric:.3f} "
            f"(drop {result.measured_drop:+.3f}; the curves predicted "
            f"{result.predicted_drop:+.3f} one-shot, cross-validation on held-out folds "
            f"{result.cross_validated_drop:+.3f} ± {result.cross_validated_std:.3f} before "
            "fine-tuning).",
            "",
            f"| {'family of channels' if speed else 'layer'} | threshold (sparsity) |",
            "|---|---|",
            *[f"| {layer} | {value:.1%} |" for layer, value in result.budget.items()],
        ]
    )


def _shrunk_row(name: str, dense: nn.Module, data: DigitsSplits, epochs: int) -> str:
    """Half the channels removed for real: what it does to size, FLOPs, latency, accuracy."""
    model = copy.deepcopy(dense)
    x = torch.cat([b[0] for b in data.test])
    result = prune(
        model,
        STRUCTURED_SPARSITY,
        criterion="taylor",
        data=data.val,
        structured=True,
        example_inputs=x[:1],
        scope="layer",
    )
    one_shot = evaluate(model, data.test)
    finetune(model, data.train, epochs=epochs, show_progress=False)
    speed_up = speedup(dense, model, x)
    return (
        f"| {name} | {result.params_before:,} → {result.params_after:,} | "
        f"{result.flops_before / max(result.flops_after or 1, 1):.2f}x | {speed_up:.2f}x | "
        f"{evaluate(dense, data.test):.3f} | {one_shot:.3f} | {evaluate(model, data.test):.3f} |"
    )


def _shrunk_table(rows: list[str], epochs: int) -> str:
    return "\n".join(
        [
            f"**Structured: {STRUCTURED_SPARSITY:.0%} of the channels of every layer removed "
            f"(taylor), then {epochs} epoch{'s' * (epochs != 1)} of fine-tuning.** "
            "Latency: whole test split in one batch, median after warm-up.",
            "",
            "| model | parameters | FLOPs fewer | faster | dense | one-shot | fine-tuned |",
            "|---|---|---|---|---|---|---|",
            *rows,
        ]
    )


def _dense_model(
    path: Path, factory: Callable[[], nn.Module], data: DigitsSplits, seed: int, quick: bool
) -> nn.Module:
    """Train once and cache: later runs of the demo reuse the saved dense model."""
    if (path / "sensiprune.json").is_file():
        return load(path, factory)
    torch.manual_seed(seed)
    model = factory()
    finetune(model, data.train, epochs=5 if quick else DENSE_EPOCHS, show_progress=False)
    save(model, path)
    return model


def _report_text(settings: SweepSettings, goals: list[str], sections: list[str]) -> str:
    options = settings.options
    return "\n\n".join(
        [
            "# sensiprune demo: size and speed goals in one call, then the criteria side by side",
            "Real handwritten digits (scikit-learn's 8x8 digits); curves and scores on the "
            "validation split, accuracy measured on the held-out test split.",
            "## One call with a goal",
            "Per-layer thresholds from the sensitivity curves, cross-validated; size goals prune "
            "single weights with OBS, the speed goal removes channels, allocated against "
            f"latency measured on this machine; then {COMPRESS_EPOCHS} epochs of fine-tuning.",
            *goals,
            "## Every criterion at every sparsity",
            f"Unstructured pruning, {options.scope} ranking (normalisation: {options.normalize}"
            f"); fine-tuning: {settings.finetune_epochs} epochs of Adam (lr {settings.lr}) with "
            "the masks held. Bold: best at that sparsity.",
            *sections,
            "![accuracy vs sparsity](accuracy_vs_sparsity.png)",
        ]
    )


def _slug(name: str) -> str:
    return "".join(c.lower() if c.isalnum() else "-" for c in name)
