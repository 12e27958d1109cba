"""Allocation benchmark: budgets from measured per-layer sensitivity vs uniform and global.

Writes benchmarks/results/allocation.md. Reproduce with:

    .venv/bin/python benchmarks/allocation.py            # a few minutes on 2 cores
"""

from __future__ import annotations

import copy
import time

from common import finish, header, parser, trained_on_digits

import sensiprune as sp
from sensiprune.zoo import LeNet5, LeNet300100, load_digits_splits

MODELS = {"LeNet-300-100": LeNet300100, "LeNet-5": LeNet5}
CURVE_POINTS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)


def compare(name, dense, data, targets, epochs) -> list[str]:
    passes = []

    def evaluate(model):
        passes.append(1)
        return sp.evaluate(model, data.val)

    started = time.perf_counter()  # nothing cached: scoring and every pass are in the time
    table = sp.sensitivity(dense, evaluate, CURVE_POINTS, show_progress=False)
    analysis = time.perf_counter() - started
    dense_acc = sp.evaluate(dense, data.test)
    out = [
        "",
        f"**{name}** — dense test accuracy {dense_acc:.3f}; sensitivity analysis "
        f"{analysis:.2f} s for {len(passes)} evaluation passes on the validation split (scoring "
        f"included, nothing cached). Cells: one-shot / after {epochs} epochs of fine-tuning.",
        "",
        "| sparsity | allocated | uniform per layer | global raw | global LAMP "
        "| allocated + OBS | global LAMP + OBS |",
        "|---|---|---|---|---|---|---|",
    ]
    for target in targets:
        budget = sp.allocate(table, target_sparsity=target)
        variants = [
            {"sparsity": budget, "criterion": "magnitude"},
            {"sparsity": target, "criterion": "magnitude", "scope": "layer"},
            {"sparsity": target, "criterion": "magnitude", "normalize": "none"},
            {"sparsity": target, "criterion": "magnitude"},
            {"sparsity": budget, "criterion": "obs", "data": data.val},
            {"sparsity": target, "criterion": "obs", "data": data.val},
        ]
        cells = []
        for kwargs in variants:
            model = copy.deepcopy(dense)
            sp.prune(model, **kwargs)
            one_shot = sp.evaluate(model, data.test)
            sp.finetune(model, data.train, epochs=epochs, show_progress=False)
            cells.append(f"{one_shot:.3f} / {sp.evaluate(model, data.test):.3f}")
        out.append(f"| {target:.0%} | " + " | ".join(cells) + " |")
    return out


def cross_validation_rows(name, dense, data, targets) -> list[str]:
    rows = []
    for target in targets:
        cv = sp.cross_validate(dense, data.val, target_sparsity=target, folds=5,
                               sparsities=CURVE_POINTS)  # fmt: skip
        model = copy.deepcopy(dense)
        sp.prune(model, cv.budget, criterion="magnitude")
        test_drop = sp.evaluate(dense, data.test) - sp.evaluate(model, data.test)
        inside = abs(test_drop - cv.observed_mean) <= 2 * cv.observed_std
        rows.append(
            f"| {name} | {target:.0%} | {cv.budget.predicted_drop:+.3f} | "
            f"{cv.observed_mean:+.3f} ± {cv.observed_std:.3f} | {test_drop:+.3f} | "
            f"{'yes' if inside else 'no'} |"
        )
    return rows


def main() -> None:
    args = parser(
        __doc__, "benchmarks/results/allocation.md", "fewer targets, no fine-tuning"
    ).parse_args()
    targets = (0.9,) if args.quick else (0.8, 0.9, 0.95)
    epochs = 0 if args.quick else 5
    data = load_digits_splits(seed=args.seed)
    started = time.perf_counter()
    lines = header("Allocation benchmark", "allocation.py", args)
    lines.append(
        "Curves: magnitude ranking, one layer at a time, measured on the validation split; "
        "test split for the numbers below only. The OBS columns prune with OBS to the same "
        "budget."
    )
    dense_models = {}
    for name, factory in MODELS.items():
        dense = trained_on_digits(factory, data, args.seed)
        dense_models[name] = dense
        lines += compare(name, dense, data, targets, epochs)
    lines += [
        "",
        "## Cross-validated prediction vs the test drop (magnitude, allocated budget)",
        "",
        "5 folds of the validation split: curves and budget from 4, drop measured on the 5th. "
        "*inside*: the test drop lies within the held-out mean ± 2 std.",
        "",
        "| model | sparsity | predicted (all folds) | held-out drop | test drop | inside |",
        "|---|---|---|---|---|---|",
    ]
    for name, dense in dense_models.items():
        lines += cross_validation_rows(name, dense, data, targets)
    finish(lines, args.out, started)


if __name__ == "__main__":
    main()
