"""Unstructured pruning benchmark: accuracy, cost, file size and sparse latency.

Writes benchmarks/results/unstructured.md. Reproduce with:

    .venv/bin/python benchmarks/unstructured.py            # full run, about 10 minutes
    .venv/bin/python benchmarks/unstructured.py --quick    # smoke run

Everything is seeded; accuracy is on the held-out test split of scikit-learn's digits.
"""

from __future__ import annotations

import copy
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import finish, header, parser, spin_threads
from torch import nn
from torch.nn.utils import prune as torch_prune

import sensiprune as sp
from sensiprune.analysis.compare import SweepSettings, sweep
from sensiprune.data import default_loss
from sensiprune.measure import count_parameters
from sensiprune.options import PruneOptions
from sensiprune.report import sweep_table
from sensiprune.zoo import LeNet5, LeNet300100, load_digits_splits

MODELS = {"LeNet-300-100": LeNet300100, "LeNet-5": LeNet5}
CHEAP_DATA_CRITERIA = ("taylor", "taylor_sq", "obd", "obd_hutchinson", "snip", "activation")


def train_dense(factory, data, seed: int, epochs: int = 40) -> nn.Module:
    torch.manual_seed(seed)
    model = factory()
    sp.finetune(model, data.train, epochs=epochs, show_progress=False)
    return model


def accuracy_tables(dense_models, data, args) -> list[str]:
    """Every criterion at every sparsity, one-shot and after the same fine-tuning."""
    settings = SweepSettings(
        sparsities=args.sparsities,
        criteria=tuple(sp.available_criteria(single_weights=True)),
        options=PruneOptions(seed=args.seed),
        finetune_epochs=args.finetune_epochs,
    )
    out = ["## Accuracy: every criterion, one-shot and fine-tuned", ""]
    out.append(
        f"Global ranking with LAMP normalisation (the default), scored on the validation split; "
        f"fine-tuning: {args.finetune_epochs} epochs of Adam (lr 1e-3), masks held. "
        "Cells: one-shot / fine-tuned test accuracy."
    )
    for name, model in dense_models.items():
        points = sweep(name, model, settings, data.val, data.train, data.test)
        out += ["", sweep_table(points, name, sp.evaluate(model, data.test))]
        out += ["", _versus_magnitude(points, 0.9)]
    return out


def _versus_magnitude(points, sparsity: float) -> str:
    """Which criteria beat magnitude one-shot at ``sparsity``, and which lose, from the data."""
    at = {p.criterion: p.one_shot for p in points if p.sparsity == sparsity}
    base = at["magnitude"]
    above = sorted((c for c in at if at[c] > base), key=lambda c: -at[c])
    below = sorted((c for c in at if at[c] < base and c != "random"), key=lambda c: -at[c])
    best = above[0] if above else "magnitude"
    return (
        f"One-shot at {sparsity:.0%}: magnitude {base:.3f}; better: "
        + (", ".join(f"{c} {at[c]:.3f}" for c in above) or "none")
        + "; worse: "
        + (", ".join(f"{c} {at[c]:.3f}" for c in below) or "none")
        + f". Best: {best}, {at[best] - base:+.3f} over magnitude. Criteria that only score "
        "(no compensation) estimate the cost of removing one weight with the others in place; "
        "at 90% the removed weights interact, so their single-removal estimates stop adding up "
        "(see the re-scoring table), and gradients of a model that fits its data are small and "
        "noisy. OBS moves the remaining weights to absorb each removal, which is why it holds."
    )


def normalisation_table(dense_models, data, sparsity: float) -> list[str]:
    """One-shot accuracy at one sparsity for each ranking scope / normalisation, plus peer."""
    variants = [
        ("global", "none"),
        ("global", "l2"),
        ("global", "lamp"),
        ("layer", "none"),
        ("row", "none"),
    ]
    out = [
        "",
        f"## Ranking scope and normalisation, one-shot at {sparsity:.0%}",
        "",
        "Scores are not on one scale across layers; this is what each way of ranking them gives. "
        "`torch.nn.utils.prune` global L1 is the peer (it should equal magnitude/global/none).",
    ]
    criteria = ["magnitude", "random", *CHEAP_DATA_CRITERIA, "obs"]
    for name, model in dense_models.items():
        out += ["", f"**{name}**", ""]
        out.append("| criterion | " + " | ".join(f"{s}/{n}" for s, n in variants) + " |")
        out.append("|---|" + "---|" * len(variants))
        for criterion in criteria:
            scores = sp.score(model, criterion, data.val)
            cells = []
            for scope, norm in variants:
                pruned = copy.deepcopy(model)
                sp.prune(
                    pruned,
                    sparsity,
                    criterion=criterion,
                    data=data.val,
                    scope=scope,
                    normalize=norm,
                    scores=scores,
                )
                cells.append(f"{sp.evaluate(pruned, data.test):.3f}")
            out.append(f"| {criterion} | " + " | ".join(cells) + " |")
        peer = copy.deepcopy(model)
        weights = [(m, "weight") for m in peer.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
        torch_prune.global_unstructured(weights, torch_prune.L1Unstructured, amount=sparsity)
        out.append(
            f"| torch.nn.utils.prune global L1 | {sp.evaluate(peer, data.test):.3f} |"
            + " |" * (len(variants) - 1)
        )
    return out


def rescoring_table(dense_models, data, sparsities, steps: int) -> list[str]:
    """One-shot (no fine-tuning) in 1 step vs ``steps`` re-scored geometric steps."""
    out = [
        "",
        f"## Re-scoring: one step vs {steps} geometric steps, no fine-tuning",
        "",
        "A saliency predicts the cost of removing one weight; removing 90% at once breaks that "
        f"assumption. `prune(..., steps={steps})` re-scores the masked model between steps. "
        "Cells: 1 step → re-scored.",
    ]
    for name, model in dense_models.items():
        out += ["", f"**{name}**", ""]
        out.append("| criterion | " + " | ".join(f"{s:.0%}" for s in sparsities) + " |")
        out.append("|---|" + "---|" * len(sparsities))
        for criterion in ("magnitude", *CHEAP_DATA_CRITERIA, "obs"):
            cells = []
            for sparsity in sparsities:
                accs = []
                for n in (1, steps):
                    pruned = copy.deepcopy(model)
                    sp.prune(pruned, sparsity, criterion=criterion, data=data.val, steps=n)
                    accs.append(sp.evaluate(pruned, data.test))
                cells.append(f"{accs[0]:.3f} → {accs[1]:.3f}")
            out.append(f"| {criterion} | " + " | ".join(cells) + " |")
    return out


def compression_target(model, data, args) -> list[str]:
    """Han et al. kept LeNet-300-100 at its accuracy with 12x fewer weights; we aim for 20x."""
    dense_acc = sp.evaluate(model, data.test)
    out = [
        "",
        "## LeNet-300-100: how far can it go without losing accuracy?",
        "",
        f"Dense test accuracy {dense_acc:.4f} (360 test images: one image = 0.28 points). "
        f"OBS one-shot, then {args.long_finetune} epochs of fine-tuning (Adam, lr 1e-3); "
        "compression counts every parameter, biases included.",
        "",
        "| target sparsity | compression | one-shot | fine-tuned | drop (points) |",
        "|---|---|---|---|---|",
    ]
    for sparsity in (0.93, 0.95, 0.96, 0.97):
        pruned = copy.deepcopy(model)
        sp.prune(pruned, sparsity, criterion="obs", data=data.val)
        one_shot = sp.evaluate(pruned, data.test)
        sp.finetune(pruned, data.train, epochs=args.long_finetune, show_progress=False)
        tuned = sp.evaluate(pruned, data.test)
        count = count_parameters(pruned)
        out.append(
            f"| {sparsity:.0%} | {count.compression:.1f}x | {one_shot:.4f} | {tuned:.4f} | "
            f"{100 * (dense_acc - tuned):+.2f} |"
        )
    return out


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cost_table(dense_models, data, repeats: int) -> list[str]:
    """Scoring time relative to one forward+backward pass over the same batches."""
    scoring = data.train * 4  # enough work per call that timer noise stays small
    slow = data.train[:4]  # perturbation runs one forward per weight: a smaller set
    out = [
        "",
        "## Cost of scoring, relative to one forward+backward pass over the same data",
        "",
        f"Scoring data: the training split four times over ({len(scoring)} batches of 64), "
        f"median of {repeats}; perturbation: {len(slow)} batches, one run, against a "
        "forward+backward pass over those batches.",
        "",
        "| criterion | "
        + " | ".join(f"{n} (ms)" for n in dense_models)
        + " | "
        + " | ".join(f"{n} (x f+b)" for n in dense_models)
        + " |",
        "|---|" + "---|" * (2 * len(dense_models)),
    ]
    rows: dict[str, list[str]] = {}
    ratios: dict[str, list[str]] = {}
    for model in dense_models.values():

        def forward_backward(batches, model=model):
            for batch in batches:
                model.zero_grad()
                default_loss(model, batch).backward()

        base = _median_seconds(lambda: forward_backward(scoring), repeats)
        rows.setdefault("forward+backward", []).append(f"{1000 * base:.1f}")
        ratios.setdefault("forward+backward", []).append("1.00")
        for criterion in sp.available_criteria(single_weights=True):
            if criterion == "perturbation":
                batches, reps = slow, 1
                reference = _median_seconds(lambda: forward_backward(slow), repeats)
            else:
                batches, reps, reference = scoring, repeats, base
            seconds = _median_seconds(
                lambda c=criterion, m=model, b=batches: sp.score(m, c, b), reps
            )
            rows.setdefault(criterion, []).append(f"{1000 * seconds:.1f}")
            ratios.setdefault(criterion, []).append(f"{seconds / reference:.2f}")
    for criterion, cells in rows.items():
        out.append(
            f"| {criterion} | " + " | ".join(cells) + " | " + " | ".join(ratios[criterion]) + " |"
        )
    return out


def file_size_table(model) -> list[str]:
    """Bytes of sp.save's compressed format relative to the dense safetensors file."""
    out = [
        "",
        "## File size of the compressed save (LeNet-300-100, weights file)",
        "",
        "| sparsity | bytes | relative to dense | loads back identical |",
        "|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        sp.save(model, Path(tmp) / "dense")
        dense = os.path.getsize(Path(tmp) / "dense" / "weights.safetensors")
        out.append(f"| 0% | {dense:,} | 1.000 | yes |")
        for sparsity in (0.5, 0.8, 0.9, 0.95, 0.98):
            pruned = copy.deepcopy(model)
            sp.prune(pruned, sparsity, criterion="magnitude")
            sp.save(pruned, Path(tmp) / "sparse")
            size = os.path.getsize(Path(tmp) / "sparse" / "weights.safetensors")
            loaded = sp.load(Path(tmp) / "sparse", LeNet300100)
            same = all(
                torch.equal(v, loaded.state_dict()[k]) for k, v in pruned.state_dict().items()
            )
            out.append(
                f"| {sparsity:.0%} | {size:,} | {size / dense:.3f} | {'yes' if same else 'NO'} |"
            )
    return out


def sparse_latency_table(repeats: int) -> list[str]:
    """A large Linear run dense vs as a torch.sparse CSR matrix, batch 32 and batch 1."""
    out = [
        "",
        "## CPU latency of a 4096x4096 Linear: dense vs torch.sparse CSR",
        "",
        f"Median of {repeats} after warm-up; {torch.get_num_threads()} threads. "
        "Ratio > 1 means sparse is faster.",
        "",
        "| sparsity | batch | dense (ms) | CSR (ms) | dense / CSR |",
        "|---|---|---|---|---|",
    ]
    torch.manual_seed(0)
    layer = nn.Linear(4096, 4096)
    for sparsity in (0.5, 0.7, 0.8, 0.9, 0.95, 0.98):
        pruned = copy.deepcopy(layer)
        sp.prune(pruned, sparsity, criterion="magnitude", min_density=0)
        csr = pruned.weight.detach().to_sparse_csr()
        for batch in (1, 32):
            x = torch.randn(batch, 4096)
            with torch.no_grad():
                weight, bias = pruned.weight, pruned.bias
                dense_t = _median_seconds(lambda x=x, w=weight, b=bias: F.linear(x, w, b), repeats)
                sparse_t = _median_seconds(
                    lambda x=x, csr=csr, b=bias: torch.addmm(b.unsqueeze(1), csr, x.T).T,
                    repeats,
                )
            out.append(
                f"| {sparsity:.0%} | {batch} | {1000 * dense_t:.3f} | {1000 * sparse_t:.3f} | "
                f"{dense_t / sparse_t:.2f} |"
            )
    return out


def main() -> None:
    spin_threads()
    args = parser(
        __doc__, "benchmarks/results/unstructured.md", "fewer sparsities and repeats"
    ).parse_args()
    args.sparsities = (0.5, 0.9) if args.quick else (0.5, 0.8, 0.9, 0.95, 0.98)
    args.finetune_epochs = 1 if args.quick else 5
    args.long_finetune = 2 if args.quick else 30
    repeats = 3 if args.quick else 31
    torch.manual_seed(args.seed)
    data = load_digits_splits(seed=args.seed)
    dense_models = {name: train_dense(f, data, args.seed) for name, f in MODELS.items()}
    started = time.perf_counter()
    lines = header("Unstructured pruning benchmark", "unstructured.py", args)
    lines += accuracy_tables(dense_models, data, args)
    lines += normalisation_table(dense_models, data, 0.9)
    lines += rescoring_table(dense_models, data, (0.8, 0.9, 0.95), steps=10)
    lines += compression_target(dense_models["LeNet-300-100"], data, args)
    lines += cost_table(dense_models, data, repeats)
    lines += file_size_table(dense_models["LeNet-300-100"])
    lines += sparse_latency_table(repeats)
    finish(lines, args.out, started)


if __name__ == "__main__":
    main()
