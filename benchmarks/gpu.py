"""GPU check: structured and unstructured pruning of models that live on a CUDA device.

Writes benchmarks/results/gpu.md. On a machine with a GPU:

    PYTHONPATH=src python benchmarks/gpu.py          # about a minute

Everything the library does is run with the model and data on the GPU: scoring from gradients,
channel surgery, head / query-head / hidden-size pruning of a decoder, heads and FFN neurons of
models no adapter knows found on their traced graph (BLOOM's ALiBi biases sliced per block
included), sp.save / sp.load, one-shot OBS and Wanda of a decoder block by block (50% and 2:4),
masks through optimiser steps; and the pruned CNNs are timed on the GPU (CUDA-synchronised, the
pruned and the dense model in alternation).
``--device cpu`` runs the same checks on the CPU.
"""

from __future__ import annotations

import copy
import tempfile
import time

import torch
import torch.nn.functional as F
from common import finish, header, leave_benchmarks_folder, parser
from structured import MobileNetV2Style, ResNet18Style
from torch import nn

import sensiprune as sp
from sensiprune.measure import count_flops, speedup

leave_benchmarks_folder()  # its transformers.py is not the library


def image_batches(device: str, n: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [
        (
            torch.randn(16, 3, 32, 32, generator=generator).to(device),
            torch.randint(0, 10, (16,), generator=generator).to(device),
        )
        for _ in range(n)
    ]


def cnn_table(device: str, rounds: int) -> list[str]:
    out = [
        "## Structured CNN pruning on the device",
        "",
        "Taylor scores from 4 batches on the device, uniform channel sparsity per layer, "
        "classifier kept. Speed-up: the pruned and the dense model timed in alternation, each "
        f"forward CUDA-synchronised, median of {rounds} rounds of 10 runs; eval mode, no_grad, "
        "float32, cuDNN autotuning on for both. Inputs 3x32x32 at batch 32 and 256, and "
        "3x224x224 at batch 64 (global average pooling takes any size).",
        "",
        "| model | sparsity | FLOP reduction | speed-up b32 | speed-up b256 "
        "| speed-up b64 at 224x224 | efficiency b64 at 224x224 | one fine-tuning step |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, factory in (
        ("ResNet-18-style", ResNet18Style),
        ("MobileNetV2-style", MobileNetV2Style),
    ):
        torch.manual_seed(0)
        dense = factory().to(device).eval()
        batches = image_batches(device)
        x32 = torch.randn(32, 3, 32, 32, device=device)
        x256 = torch.randn(256, 3, 32, 32, device=device)
        x224 = torch.randn(64, 3, 224, 224, device=device)
        base = count_flops(dense, x32[:1]).dense
        for sparsity in (0.3, 0.5, 0.7):
            model = copy.deepcopy(dense)
            sp.prune(
                model,
                sparsity,
                criterion="taylor",
                data=batches,
                structured=True,
                example_inputs=x32[:1],
                scope="layer",
                ignore=[model.fc],
            )
            assert all(p.device.type == x32.device.type for p in model.parameters())
            reduction = base / count_flops(model, x32[:1]).dense
            b32 = speedup(dense, model, x32, rounds=rounds)
            b256 = speedup(dense, model, x256, rounds=rounds)
            large = speedup(dense, model, x224, rounds=rounds)
            tuned = sp.finetune(model, batches[:1], epochs=1, show_progress=False)
            out.append(
                f"| {name} | {sparsity:.0%} | {reduction:.2f} | {b32:.2f} | {b256:.2f} | "
                f"{large:.2f} | {large / reduction:.2f} | loss {tuned.epoch_losses[-1]:.3f} |"
            )
    return out


def tiny_llama() -> nn.Module:
    """A tiny Llama (8 query / 2 key-value heads, width 64), the same weights every call."""
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=8,
        num_key_value_heads=2, intermediate_size=128, max_position_embeddings=64,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config).eval()


def token_ids(device: str) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randint(0, 100, (4, 16), generator=generator).to(device) for _ in range(3)]


def lm_loss(model: nn.Module, batch: tuple[torch.Tensor]) -> torch.Tensor:
    logits = model(batch[0]).logits[:, :-1]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[0][:, 1:].reshape(-1))


def decoder_table(device: str) -> list[str]:
    """A tiny Llama on the device: every transformer budget, generate, save and load."""
    factory, ids = tiny_llama, token_ids(device)
    out = [
        "",
        "## Transformer budgets on the device (tiny Llama, 8 query / 2 key-value heads, width 64)",
        "",
        "Taylor scores from 3 batches of token ids with the language-model loss; then greedy "
        "generation, and `sp.save` on the device / `sp.load` on the CPU compared with the "
        "device model's logits.",
        "",
        "| budget | parameters | heads (q / kv) per layer | width | generate "
        "| save/load max diff |",
        "|---|---|---|---|---|---|",
    ]
    budgets = [{"heads": 0.5}, {"query_heads": 0.5}, {"ffn": 0.5}, {"hidden": 0.25},
               {"heads": 0.5, "ffn": 0.5, "hidden": 0.25}]  # fmt: skip
    for budget in budgets:
        model = factory().to(device)
        batches = [(x,) for x in ids]
        sp.prune(
            model,
            budget,
            criterion="taylor",
            data=batches,
            loss_fn=lm_loss,
            structured=True,
            example_inputs=(ids[0],),
        )
        generated = model.generate(ids[0], max_new_tokens=4, do_sample=False, pad_token_id=0)
        with tempfile.TemporaryDirectory() as folder:
            sp.save(model, folder)
            loaded = sp.load(folder, factory)
        with torch.no_grad():
            diff = (loaded(ids[0].cpu()).logits - model(ids[0]).logits.cpu()).abs().max().item()
        attention = model.model.layers[0].self_attn
        heads = f"{attention.q_proj.out_features // 8} / {attention.k_proj.out_features // 8}"
        out.append(
            f"| {budget} | {sum(p.numel() for p in model.parameters()):,} | {heads} | "
            f"{model.config.hidden_size} | {tuple(generated.shape)} | {diff:.1e} |"
        )
    return out


def graph_table(device: str) -> list[str]:
    """Models no adapter knows, pruned on their traced graph with the model on the device:
    heads and FFN neurons found from the operators, sp.save / sp.load back to the CPU, and
    save_pretrained / from_pretrained where the config can say what was cut."""
    import transformers

    def distilbert() -> nn.Module:
        torch.manual_seed(0)
        config = transformers.DistilBertConfig(
            vocab_size=100, dim=64, n_layers=2, n_heads=4, hidden_dim=128,
            max_position_embeddings=32, num_labels=3,
        )  # fmt: skip
        return transformers.DistilBertForSequenceClassification(config).eval()

    def t5() -> nn.Module:
        torch.manual_seed(0)
        config = transformers.T5Config(
            vocab_size=100, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
            decoder_start_token_id=0,
        )  # fmt: skip
        return transformers.T5ForConditionalGeneration(config).eval()

    def bloom() -> nn.Module:  # ALiBi: each block reads its kept heads' biases (a hook)
        torch.manual_seed(0)
        config = transformers.BloomConfig(vocab_size=100, hidden_size=64, n_layer=2, n_head=4)
        return transformers.BloomForCausalLM(config).eval()

    generator = torch.Generator().manual_seed(2)
    ids = torch.randint(1, 100, (4, 16), generator=generator)
    inputs = {
        "DistilBERT": (distilbert, {"input_ids": ids}),
        "T5": (t5, {"input_ids": ids, "decoder_input_ids": ids[:, :8]}),
        "BLOOM": (bloom, {"input_ids": ids}),
    }
    out = [
        "",
        "## Models no adapter knows, on the device (traced graph)",
        "",
        '`{"heads": 0.25, "ffn": 0.25}`, magnitude, `scope="layer"`, the model and inputs on '
        "the device; outputs compared after `sp.save` on the device / `sp.load` on the CPU, "
        "and after `save_pretrained` / `from_pretrained` (`-`: the config cannot say it).",
        "",
        "| model | prune s | parameters before → after | sp.load max diff "
        "| from_pretrained max diff |",
        "|---|---:|---|---|---|",
    ]
    for name, (factory, batch) in inputs.items():
        model = factory().to(device)
        on_device = {k: v.to(device) for k, v in batch.items()}
        before = sum(p.numel() for p in model.parameters())
        start = time.perf_counter()
        sp.prune(model, {"heads": 0.25, "ffn": 0.25}, criterion="magnitude", structured=True,
                 example_inputs=on_device, scope="layer")  # fmt: skip
        seconds = time.perf_counter() - start
        with torch.no_grad():
            logits = model(**on_device).logits.cpu()
        with tempfile.TemporaryDirectory() as folder:
            sp.save(model, folder)
            with torch.no_grad():
                loaded = sp.load(folder, factory)(**batch).logits
            try:
                model.save_pretrained(folder + "/hf")
                with torch.no_grad():
                    again = type(model).from_pretrained(folder + "/hf").eval()(**batch).logits
                pretrained = f"{(again - logits).abs().max().item():.1e}"
            except RuntimeError:  # sizes the config cannot describe
                pretrained = "-"
        out.append(
            f"| {name} | {seconds:.2f} | {before:,} → "
            f"{sum(p.numel() for p in model.parameters()):,} | "
            f"{(loaded - logits).abs().max().item():.1e} | {pretrained} |"
        )
    return out


class ComputedWidthViT(nn.Module):
    """Attention as much user code writes it (DeiT, CaiT): the head width computed from the
    residual's, ``C // self.num_heads``, and the heads put back with ``reshape(B, N, C)``;
    heads and residual channels are cut in step (sensiprune.structure.ties)."""

    def __init__(self, width: int = 64, heads: int = 4, depth: int = 2) -> None:
        super().__init__()
        self.num_heads = heads
        self.embed, self.head = nn.Linear(16, width), nn.Linear(width, 10)
        self.qkv = nn.ModuleList(nn.Linear(width, 3 * width) for _ in range(depth))
        self.proj = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.mlp = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 2 * width), nn.GELU(),
                          nn.Linear(2 * width, width))
            for _ in range(depth)
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        B, N, C = x.shape
        for qkv, proj, mlp in zip(self.qkv, self.proj, self.mlp):
            q, k, v = (
                qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
            )
            attended = F.scaled_dot_product_attention(q, k, v)
            x = x + proj(attended.transpose(1, 2).reshape(B, N, C))
            x = x + mlp(x)
        return self.head(x.mean(1))


def tied_table(device: str) -> list[str]:
    """Heads tied to the residual width, cut on the device and reloaded on the CPU."""

    def factory() -> nn.Module:
        torch.manual_seed(0)
        return ComputedWidthViT().eval()

    model = factory().to(device)
    x = torch.randn(8, 12, 16, generator=torch.Generator().manual_seed(3))
    result = sp.prune(
        model,
        0.3,
        criterion="magnitude",
        structured=True,
        example_inputs=x.to(device),
        scope="layer",
        ignore=["head"],
    )
    with torch.no_grad(), tempfile.TemporaryDirectory() as folder:
        out = model(x.to(device)).cpu()
        sp.save(model, folder)
        loaded = sp.load(folder, factory)(x)
    return [
        "",
        "## Heads tied to a computed width, on the device",
        "",
        f"A hand-written ViT (`C // self.num_heads`), 30% per layer: residual width 64 → "
        f"{model.embed.out_features}, heads 4 → {model.num_heads}, FLOPs "
        f"{result.flops_before / result.flops_after:.2f}x fewer; `sp.load` on the CPU gives "
        f"outputs within {(loaded - out).abs().max().item():.1e}.",
    ]


def oneshot_table(device: str) -> list[str]:
    """One-shot pruning of the tiny Llama on the device, block by block: OBS and Wanda at
    50% and 2:4, the weights staying on the device."""
    ids = token_ids(device)
    batches = [(x,) for x in ids]
    out = [
        "",
        "## One-shot language-model pruning on the device (tiny Llama, block by block)",
        "",
        'Every Linear of the blocks (`scope="layer"`, `blockwise=True`, the LM head kept), '
        "calibrated on 3 batches of token ids; the loss on the first batch before and after.",
        "",
        "| criterion | scheme | sparsity of the blocks | loss dense → pruned | weights on |",
        "|---|---|---:|---|---|",
    ]
    for criterion in ("obs", "activation"):
        for pattern in (None, "2:4"):
            model = tiny_llama().to(device)
            with torch.no_grad():
                dense = lm_loss(model, batches[0]).item()
            sp.prune(model, 0.5, criterion=criterion, scope="layer", data=batches,
                     loss_fn=lm_loss, ignore=["lm_head"], pattern=pattern,
                     blockwise=True)  # fmt: skip
            masks = sp.get_masks(model).values()
            kept = sum(int(m.sum()) for m in masks) / sum(m.numel() for m in masks)
            with torch.no_grad():
                pruned = lm_loss(model, batches[0]).item()
            where = ", ".join(sorted({p.device.type for p in model.parameters()}))
            out.append(
                f"| {criterion} | {pattern or '50%'} | {1 - kept:.3f} | {dense:.3f} → "
                f"{pruned:.3f} | {where} |"
            )
    return out


def masks_table(device: str) -> list[str]:
    """Unstructured masks on the device stay zero through fused AdamW steps."""
    torch.manual_seed(0)
    model = ResNet18Style().to(device)
    batches = image_batches(device)
    sp.prune(model, 0.8, criterion="taylor", data=batches)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=device == "cuda")
    for x, y in batches:
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    masks = sp.get_masks(model)
    leaked = sum(int((p.detach()[~masks[n]] != 0).sum()) for n, p in model.named_parameters()
                 if n in masks)  # fmt: skip
    kept = sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
    return [
        "",
        "## Unstructured masks on the device",
        "",
        f"ResNet-18-style, taylor, 80% global sparsity, then {len(batches)} "
        f"{'fused ' if device == 'cuda' else ''}AdamW steps: {kept:.1%} of the weights kept, "
        f"{leaked} pruned weights nonzero after training.",
    ]


def main() -> None:
    cli = parser(__doc__, "benchmarks/results/gpu.md", "fewer timing rounds")
    cli.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    args = cli.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run on a machine with a GPU, or pass --device cpu")
    started = time.perf_counter()
    torch.backends.cudnn.benchmark = True  # the fastest kernel for each shape, dense or pruned
    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    lines = header("GPU check", "gpu.py", args, f"; device: {name}")
    lines += cnn_table(args.device, 1 if args.quick else 7)
    lines += decoder_table(args.device)
    lines += graph_table(args.device)
    lines += tied_table(args.device)
    lines += oneshot_table(args.device)
    lines += masks_table(args.device)
    finish(lines, args.out, started)


if __name__ == "__main__":
    main()
