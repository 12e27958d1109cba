"""Coverage survey: structured pruning of one model per timm family and per Hugging Face family,
sensiprune and torch-pruning side by side.

This script runs in its own virtual environment, .venv-bench, not in the project's .venv: it
needs timm, torchvision, a newer torch and torch-pruning, none of which the library depends on.
Create it and reproduce benchmarks/results/coverage.md from the repository root with:

    python3 -m venv .venv-bench
    .venv-bench/bin/pip install torch==2.14.1 torchvision==0.29.1
    .venv-bench/bin/pip install timm transformers==5.24.0 torch-pruning==1.6.1 numpy \\
        safetensors matplotlib scikit-learn tqdm pydantic pyyaml
    .venv-bench/bin/pip install --no-deps -e .
    .venv-bench/bin/python benchmarks/coverage.py            # full survey, 2 threads
    .venv-bench/bin/python benchmarks/coverage.py --quick    # a few models of each part
    .venv-bench/bin/python benchmarks/coverage.py --only resnet18,bert --out /tmp/c.md
    .venv-bench/bin/python benchmarks/coverage.py --json rows.json     # also every row as JSON
    .venv-bench/bin/python benchmarks/coverage.py --render rows.json   # the table again from it

The full survey takes about half an hour on 2 busy cores, most of it the peer (its graph build
does not finish within the soft per-model limit on several models: 60 s timm, 30 s HF).

Nothing is downloaded at run time: every model is built with random weights (timm with
pretrained=False, Hugging Face models from tiny configs: 2 layers, width 64, 4 heads, FFN 128,
vocabulary 1,000).

timm: each model, in eval mode, on one image of its default input size, loses 30% of the
channels of every coupled family of layers (``scope="layer"``, L2/L1 magnitude), its classifier
kept. Hugging Face: 25% of the attention heads and 25% of the feed-forward neurons of every
block. The peer is torch-pruning's MetaPruner with MagnitudeImportance(p=2) and
``global_pruning=False``, following its ViT / BERT / LLM examples for attention (a
``num_heads`` dict, the head count and head size written back afterwards), on a fresh copy of
the same model. FLOPs are counted with torch.utils.flop_counter.FlopCounterMode (eval, no_grad)
for both. Every model runs in its own try/except under a soft time limit, so one failure does
not stop the survey.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import json
import logging
import os
import platform
import re
import signal
import subprocess
import sys
import time
import traceback
import warnings
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from common import leave_benchmarks_folder, parser
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

leave_benchmarks_folder()  # benchmarks/transformers.py would stand in for the package

import sensiprune as sp  # noqa: E402
from sensiprune.io.atomic import atomic_write_bytes  # noqa: E402

# one model per timm family (its module in timm.models), small variants; a few families get a
# second model where the variants differ in what matters here (SE gates, distillation heads)
TIMM_MODELS = (
    "resnet18", "skresnet18", "resnest14d", "res2net50_26w_4s", "resnetv2_50", "densenet121",
    "inception_v3", "inception_v4", "dpn68", "regnetx_002", "regnety_002", "repvgg_a0",
    "gernet_s", "mobileone_s0", "resnext26ts", "botnet26t_256", "mobilevit_xxs",
    "mobilevitv2_050", "vgg11", "fasternet_t0", "efficientnet_b0", "mixnet_s", "tinynet_a",
    "mobilenetv3_small_100", "mobilenetv4_conv_small", "hardcorenas_a", "lcnet_050",
    "convnext_atto", "vit_tiny_patch16_224", "deit_tiny_distilled_patch16_224",
    "swin_tiny_patch4_window7_224", "swinv2_cr_tiny_ns_224", "ghostnet_100", "repghostnet_050",
    "rexnet_100", "hrnet_w18_small", "dla34", "cspresnet50", "darknet53", "tresnet_m",
    "xception41", "nfnet_l0", "levit_128s", "pit_ti_224", "coat_lite_tiny", "poolformer_s12",
    "convmixer_1024_20_ks9_p14", "edgenext_xx_small", "efficientformer_l1",
    "efficientformerv2_s0", "selecsls42b", "cait_xxs24_224", "crossvit_tiny_240",
    "twins_pcpvt_small", "volo_d1_224", "xcit_nano_12_p16_224", "maxvit_nano_rw_256",
    "fastvit_t8", "efficientvit_b0", "efficientvit_m0", "inception_next_tiny", "nest_tiny",
    "eva02_tiny_patch14_336", "hgnet_tiny", "ese_vovnet19b_dw", "mixer_s32_224",
    "resmlp_12_224", "convit_tiny", "tnt_s_patch16_224", "hiera_tiny_224", "davit_tiny",
    "focalnet_tiny_srf", "pvt_v2_b0", "visformer_tiny", "mambaout_femto", "repvit_m0_9",
    "tiny_vit_5m_224", "gcvit_xxtiny", "nextvit_small", "shvit_s1", "swiftformer_xs",
    "rdnet_tiny", "starnet_s050", "legacy_seresnet18", "sequencer2d_s",
)  # fmt: skip
QUICK_TIMM = ("resnet18", "mobilenetv3_small_100", "vit_tiny_patch16_224", "convnext_atto")
QUICK_HF = ("BERT", "GPT-2", "Llama", "ViT")
TIMM_SPARSITY = 0.3
HF_BUDGET = {"heads": 0.25, "ffn": 0.25}
LIBRARIES = ("sensiprune", "torch-pruning")
SEED = [0]  # --seed: every model is built from it


@dataclass
class Row:
    part: str  # "timm" or "hf"
    family: str
    model: str
    library: str
    ran: bool = False
    error: str = ""
    shape_kept: bool = False
    params_before: int = 0
    params_after: int = 0
    flops_before: int = 0
    flops_after: int = 0
    seconds: float = 0.0
    left_alone: list[str] = field(default_factory=list)
    # Hugging Face rows of sensiprune: the pruned model back from sp.save / sp.load, and a
    # model cut alike in every block (scope="layer") back from save / from_pretrained
    sp_load: str = ""
    from_pretrained: str = ""

    @property
    def flop_reduction(self) -> float:
        return self.flops_before / self.flops_after if self.ran and self.flops_after else 0.0


class TimeLimit(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float):
    """A soft limit: SIGALRM raises between Python bytecodes, so a long kernel finishes first."""

    def expire(signum, frame):
        raise TimeLimit(f"over the {seconds:.0f} s limit")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else ""
    return f"{type(exc).__name__}: {line}"[:600]


def main_tensor(output: Any) -> torch.Tensor:
    """The tensor a model's output leads with: logits, a last hidden state, or the first."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict):  # transformers' ModelOutput is an ordered dict
        for value in output.values():
            if isinstance(value, torch.Tensor):
                return value
    if isinstance(output, (tuple, list)):
        for value in output:
            with contextlib.suppress(TypeError):
                return main_tensor(value)
    raise TypeError(f"no tensor in the output ({type(output).__name__})")


def call(model: nn.Module, inputs: Any) -> Any:
    return model(**inputs) if isinstance(inputs, dict) else model(inputs)


def measure(model: nn.Module, inputs: Any) -> tuple[tuple[int, ...], int, int]:
    """Output shape, FLOPs of one forward (eval, no_grad) and parameters. The parameters stop
    requiring grad meanwhile: FlopCounterMode's module tracker asserts on a parameter handed
    to a submodule under no_grad (PiT's and CaiT's class tokens)."""
    model.eval()
    counter = FlopCounterMode(display=False)
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        for p in params:
            p.requires_grad_(False)
        with torch.no_grad(), counter:
            shape = tuple(main_tensor(call(model, inputs)).shape)
    finally:
        for p in params:
            p.requires_grad_(True)
    return shape, counter.get_total_flops(), sum(p.numel() for p in model.parameters())


def modules_of(head: Any) -> list[nn.Module]:
    """Every module under a classifier (timm's may be a tuple, or a ModuleList of heads)."""
    heads = head if isinstance(head, (tuple, list)) else (head,)
    return [m for h in heads if isinstance(h, nn.Module) for m in h.modules()]


# -- attention for torch-pruning's num_heads recipe --------------------------------------------
_SEPARATE = (
    ("q_proj", "k_proj", "v_proj"), ("query", "key", "value"), ("q", "k", "v"),
    ("q_lin", "k_lin", "v_lin"), ("query_proj", "key_proj", "value_proj"),
)  # fmt: skip
_FUSED = ("qkv", "c_attn", "query_key_value", "qkv_proj", "Wqkv", "in_proj")
_HEAD_ATTRS = ("num_heads", "num_attention_heads", "n_head", "n_heads")
_KV_ATTRS = ("num_key_value_heads", "num_kv_heads", "n_head_kv")


def _attr(module: nn.Module, names: tuple[str, ...]) -> int | None:
    for source in (module, getattr(module, "config", None)):
        for name in names:
            value = getattr(source, name, None) if source is not None else None
            if isinstance(value, int) and value > 0:
                return value
    return None


def attention_layout(model: nn.Module) -> list[dict]:
    """Each attention module with its projections and head counts, as the peer's examples
    collect them (q/k/v of a BERT or Llama layer, the fused qkv of a timm ViT)."""
    found = []
    config_heads = getattr(getattr(model, "config", None), "num_attention_heads", None)
    config_kv = getattr(getattr(model, "config", None), "num_key_value_heads", None)
    for module in model.modules():
        children = dict(module.named_children())
        heads = _attr(module, _HEAD_ATTRS) or (config_heads if isinstance(config_heads, int)
                                                else None)  # fmt: skip
        if not heads:
            continue
        kv = _attr(module, _KV_ATTRS) or (config_kv if isinstance(config_kv, int) else heads)
        for names in _SEPARATE:
            if all(isinstance(children.get(n), nn.Module) for n in names):
                q, k, v = (children[n] for n in names)
                if hasattr(q, "weight") and hasattr(k, "weight"):
                    found.append({"module": module, "q": q, "k": k, "v": v, "heads": heads,
                                  "kv": kv, "fused": False})  # fmt: skip
                break
        else:
            for name in _FUSED:
                proj = children.get(name)
                if isinstance(proj, nn.Module) and hasattr(proj, "weight"):
                    found.append({"module": module, "q": proj, "heads": heads, "kv": kv,
                                  "fused": True})  # fmt: skip
                    break
    return found


def _out(layer: nn.Module) -> int:
    if hasattr(layer, "out_features"):
        return layer.out_features
    if hasattr(layer, "nf"):  # transformers' Conv1D
        return layer.nf
    return layer.weight.shape[0]


def peer_num_heads(layout: list[dict]) -> dict[nn.Module, int]:
    heads: dict[nn.Module, int] = {}
    for a in layout:
        heads[a["q"]] = a["heads"]
        if not a["fused"]:
            heads[a["k"]] = a["kv"]
            heads[a["v"]] = a["kv"]
    return heads


def write_back_heads(layout: list[dict], pruner: Any, head_dims: bool) -> None:
    """What the peer's examples do after step(): the module's head count (and, when head dims
    were pruned, its head size) from the pruned projections."""
    for a in layout:
        module, q = a["module"], a["q"]
        heads = pruner.num_heads.get(q, a["heads"])
        parts = 3 if a["fused"] else 1
        for name in _HEAD_ATTRS:
            if isinstance(getattr(module, name, None), int):
                setattr(module, name, heads)
        if not a["fused"]:
            kv = pruner.num_heads.get(a["k"], a["kv"])
            for name in _KV_ATTRS:
                if isinstance(getattr(module, name, None), int):
                    setattr(module, name, kv)
            if isinstance(getattr(module, "num_key_value_groups", None), int):
                module.num_key_value_groups = max(heads // max(kv, 1), 1)
        if head_dims:
            for name in ("head_dim", "attention_head_size", "head_size"):
                if isinstance(getattr(module, name, None), int):
                    setattr(module, name, _out(q) // parts // heads)
        for name in ("all_head_size", "split_size", "inner_dim", "attn_dim"):
            if isinstance(getattr(module, name, None), int):
                setattr(module, name, _out(q) // parts)


def prune_peer(model: nn.Module, inputs: Any, ratio: float, ignored: list[nn.Module], hf: bool):
    import torch_pruning as tp

    layout = attention_layout(model)
    heads = peer_num_heads(layout)
    options: dict[str, Any] = {}
    if hf:  # the peer's BERT / LLM recipe: whole heads, FFN neurons; the model width kept
        options = dict(prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=ratio)
    pruner = tp.pruner.MetaPruner(
        model, inputs, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=ratio,
        ignored_layers=ignored, global_pruning=False, num_heads=heads,
        output_transform=main_tensor, **options,
    )  # fmt: skip
    pruner.step()
    write_back_heads(layout, pruner, head_dims=not hf)


# -- one model, both libraries -------------------------------------------------------------------
def survey_model(
    part: str,
    family: str,
    name: str,
    build: Callable[[], tuple[nn.Module, Any, list[nn.Module] | Callable]],
    limit: float,
    libraries: tuple[str, ...],
) -> list[Row]:
    rows = [Row(part, family, name, lib) for lib in libraries]
    try:
        with time_limit(limit):
            torch.manual_seed(SEED[0])
            dense, inputs, _ = build()
            shape, flops, params = measure(dense, inputs)
    except Exception as exc:
        for row in rows:
            row.error = "building or running the dense model: " + first_line(exc)
        return rows
    for row in rows:
        row.params_before, row.flops_before = params, flops
        try:
            model = copy.deepcopy(dense)
            keep = build_ignore(model, build)
        except Exception:
            torch.manual_seed(SEED[0])
            model, _, _ = build()
            keep = build_ignore(model, build)
        stage, start = "prune", time.perf_counter()
        try:
            with time_limit(limit), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                start = time.perf_counter()
                if row.library == "sensiprune":
                    result = prune_ours(model, inputs, keep, part)
                    row.left_alone = list(result.untouched)
                else:
                    prune_peer(model, inputs, TIMM_SPARSITY if part == "timm" else 0.25, keep,
                               hf=part == "hf")  # fmt: skip
                row.seconds = time.perf_counter() - start
                stage = "forward after pruning"
                new_shape, row.flops_after, row.params_after = measure(model, inputs)
            row.ran = True
            row.shape_kept = new_shape == shape
            if part == "hf" and row.library == "sensiprune":
                with time_limit(limit):
                    row.sp_load, row.from_pretrained = reloads(model, inputs, build)
        except Exception as exc:
            row.seconds = row.seconds or time.perf_counter() - start
            row.error = f"{stage}: {first_line(exc)}"
            if os.environ.get("COVERAGE_TRACEBACK"):
                traceback.print_exc()
        del model
    return rows


def reloads(pruned: nn.Module, inputs: Any, build: Callable) -> tuple[str, str]:
    """Whether ``pruned`` comes back from sp.save / sp.load with the same outputs, and
    whether a fresh model cut alike in every block comes back from save_pretrained /
    from_pretrained: "yes", or "no: " and why."""
    import tempfile

    def same(a: nn.Module, b: nn.Module) -> str:
        with torch.no_grad():
            x, y = main_tensor(call(a.eval(), inputs)), main_tensor(call(b.eval(), inputs))
        return "yes" if x.shape == y.shape and torch.allclose(x, y, atol=1e-5) else "no: outputs"

    def fresh() -> nn.Module:
        torch.manual_seed(SEED[0])
        return build()[0]

    answers = []
    for check in ("sp.load", "from_pretrained"):
        try:
            with tempfile.TemporaryDirectory() as folder:
                if check == "sp.load":
                    sp.save(pruned, folder)
                    answers.append(same(pruned, sp.load(folder, fresh)))
                else:
                    model = fresh()
                    sp.prune(model, dict(HF_BUDGET), criterion="magnitude", structured=True,
                             example_inputs=inputs, scope="layer")  # fmt: skip
                    model.save_pretrained(folder)
                    answers.append(same(model, type(model).from_pretrained(folder)))
        except Exception as exc:
            answers.append(f"no: {first_line(exc)[:80]}")
    return answers[0], answers[1]


def build_ignore(model: nn.Module, build: Callable) -> list[nn.Module]:
    """The modules to keep (the classifier; for the peer on Hugging Face models, also the
    input embeddings), found on this copy of the model by the builder's ``ignore``."""
    return build.ignore(model) if hasattr(build, "ignore") else []


def prune_ours(model: nn.Module, inputs: Any, keep: list[nn.Module], part: str) -> Any:
    if part == "timm":
        return sp.prune(model, TIMM_SPARSITY, criterion="magnitude", structured=True,
                        example_inputs=inputs, scope="layer", ignore=keep)  # fmt: skip
    return sp.prune(model, dict(HF_BUDGET), criterion="magnitude", structured=True,
                    example_inputs=inputs)  # fmt: skip


# -- timm --------------------------------------------------------------------------------------
def timm_builder(name: str, small: bool) -> Callable:
    import timm

    def build():
        model = timm.create_model(name, pretrained=False).eval()
        cfg = model.pretrained_cfg
        size = tuple(cfg.get("input_size", (3, 224, 224)))
        if small and not cfg.get("fixed_input_size", False):
            size = (size[0], 128, 128)
        return model, torch.randn(1, *size), []

    build.ignore = lambda model: modules_of(model.get_classifier())  # type: ignore[attr-defined]
    return build


# -- transformers ------------------------------------------------------------------------------
V, H, L, A, F = 1000, 64, 2, 4, 128  # vocabulary, width, layers, heads, FFN


def hf_models() -> dict[str, Callable]:
    import transformers as t

    def ids(n: int = 16) -> torch.Tensor:
        return torch.randint(3, V, (2, n), generator=torch.Generator().manual_seed(1))

    def text(model: nn.Module) -> tuple[nn.Module, dict]:
        return model.eval(), {"input_ids": ids(), "attention_mask": torch.ones(2, 16).long()}

    def causal(model: nn.Module) -> tuple[nn.Module, dict]:
        return model.eval(), {"input_ids": ids()}

    def seq2seq(model: nn.Module) -> tuple[nn.Module, dict]:
        return model.eval(), {"input_ids": ids(), "attention_mask": torch.ones(2, 16).long(),
                              "decoder_input_ids": ids(8)}  # fmt: skip

    def image(model: nn.Module, size: int = 32) -> tuple[nn.Module, dict]:
        return model.eval(), {"pixel_values": torch.randn(2, 3, size, size)}

    bert = dict(vocab_size=V, hidden_size=H, num_hidden_layers=L, num_attention_heads=A,
                intermediate_size=F, max_position_embeddings=64)  # fmt: skip
    llama = dict(vocab_size=V, hidden_size=H, num_hidden_layers=L, num_attention_heads=A,
                 num_key_value_heads=2, intermediate_size=F, max_position_embeddings=64,
                 pad_token_id=0)  # fmt: skip
    vit = dict(image_size=32, patch_size=8, num_channels=3, hidden_size=H, num_hidden_layers=L,
               num_attention_heads=A, intermediate_size=F)  # fmt: skip
    audio = dict(vocab_size=32, hidden_size=H, num_hidden_layers=L, num_attention_heads=A,
                 intermediate_size=F, conv_dim=(32, 32), conv_stride=(5, 2),
                 conv_kernel=(10, 3), num_conv_pos_embeddings=16,
                 num_conv_pos_embedding_groups=4)  # fmt: skip
    bart = dict(vocab_size=V, d_model=H, encoder_layers=L, decoder_layers=L,
                encoder_attention_heads=A, decoder_attention_heads=A, encoder_ffn_dim=F,
                decoder_ffn_dim=F, max_position_embeddings=64)  # fmt: skip
    cls = dict(num_labels=3)
    models: dict[str, Callable] = {
        "BERT": lambda: text(t.BertForSequenceClassification(t.BertConfig(**bert, **cls))),
        "RoBERTa": lambda: text(t.RobertaForSequenceClassification(t.RobertaConfig(**bert, **cls))),
        "XLM-RoBERTa": lambda: text(
            t.XLMRobertaForSequenceClassification(t.XLMRobertaConfig(**bert, **cls))
        ),
        "ELECTRA": lambda: text(
            t.ElectraForSequenceClassification(t.ElectraConfig(**bert, embedding_size=H, **cls))
        ),
        "DistilBERT": lambda: text(
            t.DistilBertForSequenceClassification(
                t.DistilBertConfig(
                    vocab_size=V,
                    dim=H,
                    n_layers=L,
                    n_heads=A,
                    hidden_dim=F,
                    max_position_embeddings=64,
                    **cls,
                )
            )
        ),
        "ALBERT": lambda: text(
            t.AlbertForSequenceClassification(t.AlbertConfig(**bert, embedding_size=32, **cls))
        ),
        "DeBERTa": lambda: text(t.DebertaForSequenceClassification(t.DebertaConfig(**bert, **cls))),
        "DeBERTa-v2": lambda: text(
            t.DebertaV2ForSequenceClassification(t.DebertaV2Config(**bert, **cls))
        ),
        "MPNet": lambda: text(t.MPNetForSequenceClassification(t.MPNetConfig(**bert, **cls))),
        "ModernBERT": lambda: text(
            t.ModernBertForSequenceClassification(
                t.ModernBertConfig(
                    vocab_size=V,
                    hidden_size=H,
                    num_hidden_layers=L,
                    num_attention_heads=A,
                    intermediate_size=F,
                    max_position_embeddings=64,
                    pad_token_id=0,
                    **cls,
                )
            )
        ),
        "GPT-2": lambda: causal(
            t.GPT2LMHeadModel(
                t.GPT2Config(vocab_size=V, n_embd=H, n_layer=L, n_head=A, n_inner=F, n_positions=64)
            )
        ),
        "GPT-Neo": lambda: causal(
            t.GPTNeoForCausalLM(
                t.GPTNeoConfig(
                    vocab_size=V,
                    hidden_size=H,
                    num_layers=L,
                    num_heads=A,
                    intermediate_size=F,
                    attention_types=[[["global", "local"], 1]],
                    max_position_embeddings=64,
                    window_size=8,
                )
            )
        ),
        "GPT-NeoX": lambda: causal(
            t.GPTNeoXForCausalLM(
                t.GPTNeoXConfig(
                    vocab_size=V,
                    hidden_size=H,
                    num_hidden_layers=L,
                    num_attention_heads=A,
                    intermediate_size=F,
                    max_position_embeddings=64,
                )
            )
        ),
        "GPT-J": lambda: causal(
            t.GPTJForCausalLM(
                t.GPTJConfig(
                    vocab_size=V,
                    n_embd=H,
                    n_layer=L,
                    n_head=A,
                    n_inner=F,
                    rotary_dim=8,
                    n_positions=64,
                )
            )
        ),
        "GPT-BigCode": lambda: causal(
            t.GPTBigCodeForCausalLM(
                t.GPTBigCodeConfig(
                    vocab_size=V, n_embd=H, n_layer=L, n_head=A, n_inner=F, n_positions=64
                )
            )
        ),
        "CodeGen": lambda: causal(
            t.CodeGenForCausalLM(
                t.CodeGenConfig(
                    vocab_size=V,
                    n_embd=H,
                    n_layer=L,
                    n_head=A,
                    n_inner=F,
                    rotary_dim=8,
                    n_positions=64,
                    n_ctx=64,
                )
            )
        ),
        "OPT": lambda: causal(
            t.OPTForCausalLM(
                t.OPTConfig(
                    vocab_size=V,
                    hidden_size=H,
                    num_hidden_layers=L,
                    num_attention_heads=A,
                    ffn_dim=F,
                    word_embed_proj_dim=H,
                    max_position_embeddings=64,
                )
            )
        ),
        "BLOOM": lambda: causal(
            t.BloomForCausalLM(t.BloomConfig(vocab_size=V, hidden_size=H, n_layer=L, n_head=A))
        ),
        "Falcon": lambda: causal(
            t.FalconForCausalLM(
                t.FalconConfig(
                    vocab_size=V, hidden_size=H, num_hidden_layers=L, num_attention_heads=A
                )
            )
        ),
        "MPT": lambda: causal(
            t.MptForCausalLM(
                t.MptConfig(
                    vocab_size=V,
                    d_model=H,
                    n_layers=L,
                    n_heads=A,
                    expansion_ratio=2,
                    max_seq_len=64,
                )
            )
        ),
        "Phi": lambda: causal(
            t.PhiForCausalLM(
                t.PhiConfig(
                    vocab_size=V,
                    hidden_size=H,
                    num_hidden_layers=L,
                    num_attention_heads=A,
                    intermediate_size=F,
                    max_position_embeddings=64,
                )
            )
        ),
        "Phi-3": lambda: causal(t.Phi3ForCausalLM(t.Phi3Config(**llama))),
        "Llama": lambda: causal(t.LlamaForCausalLM(t.LlamaConfig(**llama))),
        "Mistral": lambda: causal(t.MistralForCausalLM(t.MistralConfig(**llama))),
        "Mixtral (MoE)": lambda: causal(
            t.MixtralForCausalLM(
                t.MixtralConfig(**llama, num_local_experts=4, num_experts_per_tok=2)
            )
        ),
        "Qwen2": lambda: causal(t.Qwen2ForCausalLM(t.Qwen2Config(**llama))),
        "Qwen3": lambda: causal(t.Qwen3ForCausalLM(t.Qwen3Config(**llama, head_dim=16))),
        "Gemma": lambda: causal(t.GemmaForCausalLM(t.GemmaConfig(**llama, head_dim=16))),
        "Gemma-2": lambda: causal(t.Gemma2ForCausalLM(t.Gemma2Config(**llama, head_dim=16))),
        "OLMo": lambda: causal(t.OlmoForCausalLM(t.OlmoConfig(**llama))),
        "OLMo-2": lambda: causal(t.Olmo2ForCausalLM(t.Olmo2Config(**llama))),
        "StableLM": lambda: causal(t.StableLmForCausalLM(t.StableLmConfig(**llama))),
        "Starcoder2": lambda: causal(t.Starcoder2ForCausalLM(t.Starcoder2Config(**llama))),
        "Granite": lambda: causal(t.GraniteForCausalLM(t.GraniteConfig(**llama))),
        "Cohere": lambda: causal(t.CohereForCausalLM(t.CohereConfig(**llama))),
        "CLIP text": lambda: text(
            t.CLIPTextModel(
                t.CLIPTextConfig(
                    vocab_size=V,
                    hidden_size=H,
                    num_hidden_layers=L,
                    num_attention_heads=A,
                    intermediate_size=F,
                    max_position_embeddings=64,
                )
            )
        ),
        "CLIP vision": lambda: image(t.CLIPVisionModel(t.CLIPVisionConfig(**vit))),
        "SigLIP vision": lambda: image(t.SiglipVisionModel(t.SiglipVisionConfig(**vit))),
        "ViT": lambda: image(t.ViTForImageClassification(t.ViTConfig(**vit, **cls))),
        "DeiT": lambda: image(t.DeiTForImageClassification(t.DeiTConfig(**vit, **cls))),
        "BEiT": lambda: image(t.BeitForImageClassification(t.BeitConfig(**vit, **cls))),
        "DINOv2": lambda: image(t.Dinov2ForImageClassification(t.Dinov2Config(**vit, **cls))),
        "Swin": lambda: image(
            t.SwinForImageClassification(
                t.SwinConfig(
                    image_size=32,
                    patch_size=4,
                    embed_dim=32,
                    depths=[1, 1],
                    num_heads=[2, 4],
                    window_size=4,
                    **cls,
                )
            )
        ),
        "T5": lambda: seq2seq(
            t.T5ForConditionalGeneration(
                t.T5Config(
                    vocab_size=V,
                    d_model=H,
                    d_kv=16,
                    d_ff=F,
                    num_layers=L,
                    num_heads=A,
                    decoder_start_token_id=0,
                )
            )
        ),
        "BART": lambda: seq2seq(t.BartForConditionalGeneration(t.BartConfig(**bart))),
        "Whisper": lambda: (
            t.WhisperForConditionalGeneration(
                t.WhisperConfig(
                    vocab_size=V,
                    d_model=H,
                    encoder_layers=L,
                    decoder_layers=L,
                    encoder_attention_heads=A,
                    decoder_attention_heads=A,
                    encoder_ffn_dim=F,
                    decoder_ffn_dim=F,
                    num_mel_bins=16,
                    max_source_positions=32,
                    max_target_positions=32,
                    pad_token_id=0,
                    bos_token_id=1,
                    eos_token_id=2,
                    decoder_start_token_id=1,
                )
            ).eval(),
            {"input_features": torch.randn(2, 16, 64), "decoder_input_ids": ids(8)},
        ),
        "wav2vec2": lambda: (
            t.Wav2Vec2ForCTC(t.Wav2Vec2Config(**audio)).eval(),
            {"input_values": torch.randn(2, 4000)},
        ),
        "HuBERT": lambda: (
            t.HubertForCTC(t.HubertConfig(**audio)).eval(),
            {"input_values": torch.randn(2, 4000)},
        ),
    }
    return models


def hf_builder(make: Callable) -> Callable:
    def build():
        model, inputs = make()
        return model, inputs, []

    def ignore(model: nn.Module) -> list[nn.Module]:
        """Kept by the peer: the task head, and the input embeddings (so that, as in the
        sensiprune budget, the model width stays: the residual stream is one group)."""
        keep: list[nn.Module] = []
        with contextlib.suppress(Exception):
            out = model.get_output_embeddings()
            keep += modules_of(out) if out is not None else []
        for name in ("classifier", "score", "lm_head", "lm_head_head", "pooler", "qa_outputs"):
            keep += modules_of(getattr(model, name, None))
        with contextlib.suppress(Exception):
            keep += modules_of(model.get_input_embeddings())
        return keep

    build.ignore = ignore  # type: ignore[attr-defined]
    return build


# -- the report --------------------------------------------------------------------------------
def reason_keys(item: str) -> list[str]:
    """A left-alone line without the model's own module names. sensiprune writes one line per
    reason, ``place, place, place and 4 more: why``; an operation keeps its name
    (``call_method:reshape: reshape that moves the channels``), a module path becomes the
    reason alone (``Attention is not understood``)."""
    places, _, why = item.partition(": ")
    if not why:
        return [item]
    keys = []
    for place in places.split(", "):
        place = place.split(" and ")[0]
        op = place if place.startswith(("call_function:", "call_method:")) else ""
        keys.append(f"{op}: {why}" if op else why)
    return list(dict.fromkeys(keys))


def summary_lines(rows: list[Row], part: str, threshold: float) -> list[str]:
    """Models, and in brackets families (a family counts when one of its models does)."""
    lines = [
        f"| library | models (families) | ran | ran + output shape kept | ran + shape kept + "
        f"FLOP reduction ≥ {threshold}x | median FLOP reduction (ran) |",
        "|---|---:|---:|---:|---:|---:|",
    ]

    def count(chosen: list[Row]) -> str:
        return f"{len(chosen)} ({len({r.family for r in chosen})})"

    for lib in LIBRARIES:
        mine = [r for r in rows if r.part == part and r.library == lib]
        if not mine:
            continue
        ran = [r for r in mine if r.ran]
        kept = [r for r in ran if r.shape_kept]
        good = [r for r in kept if r.flop_reduction >= threshold]
        reductions = sorted(r.flop_reduction for r in ran)
        median = reductions[len(reductions) // 2] if reductions else 0.0
        lines.append(
            f"| {lib} | {count(mine)} | {count(ran)} | {count(kept)} | {count(good)} "
            f"| {median:.2f}x |"
        )
    return lines


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def model_table(rows: list[Row], part: str) -> list[str]:
    reload = part == "hf"
    lines = [
        "| family | model | library | ran | shape kept | params (M) before → after "
        "| GFLOPs before → after | FLOP reduction | prune s "
        + ("| sp.load | from_pretrained (uniform cut) " if reload else "")
        + "| error |",
        "|---|---|---|---|---|---|---|---:|---:|" + ("---|---|" if reload else "") + "---|",
    ]
    for r in rows:
        if r.part != part:
            continue
        params = (f"{r.params_before / 1e6:.2f} → {r.params_after / 1e6:.2f}" if r.ran
                  else f"{r.params_before / 1e6:.2f}")  # fmt: skip
        flops = (f"{r.flops_before / 1e9:.3f} → {r.flops_after / 1e9:.3f}" if r.ran
                 else f"{r.flops_before / 1e9:.3f}")  # fmt: skip
        lines.append(
            f"| {r.family} | {r.model} | {r.library} | {'yes' if r.ran else '**no**'} "
            f"| {'yes' if r.shape_kept else 'no'} | {params} | {flops} "
            f"| {r.flop_reduction:.2f}x | {r.seconds:.1f} "
            + (f"| {cell(r.sp_load)} | {cell(r.from_pretrained)} " if reload else "")
            + f"| {cell(r.error)} |"
        )
    return lines


def reload_lines(rows: list[Row]) -> list[str]:
    mine = [r for r in rows if r.part == "hf" and r.library == "sensiprune" and r.ran]
    loads = [r.family for r in mine if r.sp_load == "yes"]
    pretrained = [r.family for r in mine if r.from_pretrained == "yes"]
    return [
        f"Of the {len(mine)} families sensiprune pruned, {len(loads)} come back from "
        f"`sp.save` / `sp.load` with the same outputs, and {len(pretrained)} cut alike in "
        'every block (`scope="layer"`) come back from `save_pretrained` / `from_pretrained`. '
        "Where a family's config derives the head size from the width (head count x head "
        "size = hidden size), no config can describe fewer heads: sensiprune says so and "
        "keeps the config (`sp.load` is the way back).",
    ]


def reason_table(rows: list[Row], part: str) -> list[str]:
    """sensiprune's left-alone reasons, by how many models each affects."""
    models: dict[str, list[str]] = defaultdict(list)
    for r in rows:
        if r.part == part and r.library == "sensiprune":
            for key in dict.fromkeys(k for u in r.left_alone for k in reason_keys(u)):
                models[key].append(r.model)
    lines = ["| left alone because | models | which |", "|---|---:|---|"]
    for key, names in sorted(models.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        lines.append(f"| {cell(key[:160])} | {len(names)} | {', '.join(names)} |")
    return lines


def error_key(error: str) -> str:
    """An error without the model's own module names, so that one cause is one row."""
    error = re.sub(r" \(nn\.MultiheadAttention, or [^)]*\): .*", " (no adapter for it)", error)
    return re.sub(r"; known layouts: .*", "", error)


def error_table(rows: list[Row], part: str) -> list[str]:
    which: dict[str, list[str]] = defaultdict(list)
    for r in rows:
        if r.part == part and r.library == "sensiprune" and r.error:
            which[error_key(r.error)].append(r.model)
    lines = ["| error | models | which |", "|---|---:|---|"]
    for error, names in sorted(which.items(), key=lambda kv: -len(kv[1])):
        lines.append(f"| {cell(error[:400])} | {len(names)} | {', '.join(names)} |")
    return lines


def write_atomically(path: str, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def sensiprune_source() -> str:
    """Which sensiprune ran: the repository's commit, whether src/ had uncommitted changes,
    and where it was imported from when that is not this repository's src/."""
    root = Path(__file__).resolve().parents[1]
    where = Path(sp.__file__).resolve().parent

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    text = f"sensiprune {version('sensiprune')}"
    commit = git("rev-parse", "--short", "HEAD")
    if commit:
        text += f" (repository at {commit}"
        text += ", src/ with uncommitted changes)" if git("status", "--porcelain", "src") else ")"
    if where != root / "src" / "sensiprune":
        text += f", imported from {where}"
    return text


def report(rows: list[Row], run: dict) -> str:
    """The markdown table of ``rows``; ``run`` says how they were made (see :func:`main`)."""
    timm_rows = [r for r in rows if r.part == "timm"]
    hf_rows = [r for r in rows if r.part == "hf"]
    families = len({r.family for r in timm_rows})
    lines = [
        "# Coverage: one model per timm and Hugging Face family",
        "",
        f"`{run['command']}` — {run['date']}, {run['machine']}, {run['threads']} threads, in "
        "`.venv-bench` (see the script's docstring): "
        f"torch {version('torch')}, timm {version('timm')}, transformers "
        f"{version('transformers')}, torch-pruning {version('torch-pruning')}, "
        f"{run['source']}.",
        "",
        "Random weights everywhere; nothing downloaded. *ran*: prune returned and the pruned "
        "model ran a forward pass. *shape kept*: that output has the dense model's shape. "
        "FLOPs: `torch.utils.flop_counter.FlopCounterMode`, eval mode, no_grad, one forward "
        "pass on the example input, for both libraries. Prune seconds include building each "
        "library's graph (sensiprune also counts FLOPs and runs the pruned model once).",
        "",
    ]
    if timm_rows:
        lines += [
            f"## timm: {len({r.model for r in timm_rows})} models, {families} families",
            "",
            f"30% of the channels of every coupled family (`sp.prune(model, {TIMM_SPARSITY}, "
            '"magnitude", structured=True, scope="layer", ignore=[classifier])`), the '
            "classifier (`model.get_classifier()`) kept; batch 1 at the model's default input "
            f"size{' (128 px where it is not fixed)' if run['quick'] else ''}. Peer: "
            "`tp.pruner.MetaPruner(model, x, importance=MagnitudeImportance(p=2), "
            "pruning_ratio=0.3, ignored_layers=[classifier], global_pruning=False, "
            "num_heads={attn.qkv: attn.num_heads})`, then `num_heads`/`head_dim` written back "
            "(its timm ViT example).",
            "",
            *summary_lines(rows, "timm", 1.5),
            "",
            "### sensiprune: what was left alone, and why (models affected)",
            "",
            *reason_table(rows, "timm"),
            "",
            "### sensiprune: errors",
            "",
            *error_table(rows, "timm"),
            "",
            "### Every model",
            "",
            *model_table(rows, "timm"),
            "",
        ]
    if hf_rows:
        lines += [
            f"## Hugging Face transformers: {len({r.family for r in hf_rows})} families",
            "",
            f"Tiny configs ({L} layers, width {H}, {A} heads, FFN {F}, vocabulary {V}; "
            "grouped-query models 2 key/value heads), task heads where the family has one, "
            "batch 2 x 16 tokens / 32 px images / 4,000 audio samples. sensiprune: "
            f'`sp.prune(model, {HF_BUDGET}, "magnitude", structured=True, '
            "example_inputs=inputs)`. Peer, after its BERT / LLM examples: "
            "`MetaPruner(model, inputs, MagnitudeImportance(p=2), pruning_ratio=0.25, "
            "num_heads={q: heads, k: kv_heads, v: kv_heads} (or {fused qkv: heads}), "
            "prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=0.25, "
            "ignored_layers=[task head, input embeddings], output_transform=logits)`, head "
            "counts written back to the attention modules. 25% of heads and FFN neurons "
            "cannot cut FLOPs by much more than 1.3x (embeddings and the LM head stay), so the "
            "bar here is any cut of at least 1.05x.",
            "",
            *summary_lines(rows, "hf", 1.05),
            "",
            *reload_lines(rows),
            "",
            "### sensiprune: what was left alone, and why",
            "",
            *reason_table(rows, "hf"),
            "",
            "### sensiprune: errors",
            "",
            *error_table(rows, "hf"),
            "",
            "### Every model",
            "",
            *model_table(rows, "hf"),
            "",
        ]
    lines += [f"Total survey time: {run['elapsed']:.0f} s.", ""]
    return "\n".join(lines)


def selected(name: str, only: list[str]) -> bool:
    return not only or any(o.lower() in name.lower() for o in only)


def main() -> None:
    cli = parser(__doc__, "benchmarks/results/coverage.md", "four models of each part, 128 px")
    cli.add_argument("--only", default="", help="comma-separated names (substrings) to run")
    cli.add_argument("--part", choices=("all", "timm", "hf"), default="all")
    cli.add_argument(
        "--limit",
        type=float,
        default=60.0,
        help="soft time limit per timm model and library, seconds (default: 60)",
    )
    cli.add_argument(
        "--hf-limit",
        type=float,
        default=30.0,
        help="the same for the tiny Hugging Face models (default: 30)",
    )
    cli.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    cli.add_argument("--json", default="", help="also write every row to this JSON file")
    cli.add_argument(
        "--libraries",
        default=",".join(LIBRARIES),
        help="comma-separated: sensiprune,torch-pruning (default: both)",
    )
    cli.add_argument(
        "--render",
        default="",
        metavar="JSON",
        help="write the table from a file written by --json, without running anything",
    )
    args = cli.parse_args()  # fmt: skip
    if args.render:
        saved = json.loads(Path(args.render).read_text())
        names = {f.name for f in fields(Row)}
        rows = [Row(**{k: v for k, v in r.items() if k in names}) for r in saved["rows"]]
        text = report(rows, saved["run"])
        write_atomically(args.out, text)
        print(text)
        return
    args.libraries = tuple(x for x in args.libraries.split(",") if x)
    only = [x for x in args.only.split(",") if x]
    torch.set_num_threads(args.threads)
    SEED[0] = args.seed
    warnings.filterwarnings("ignore")
    logging.getLogger("sensiprune").setLevel(logging.ERROR)  # save_pretrained advice
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    started = time.perf_counter()
    source = sensiprune_source()  # the code the rows come from: read before they run
    jobs: list[tuple[str, str, str, Callable]] = []
    if args.part in ("all", "timm"):
        import timm

        names = QUICK_TIMM if args.quick else TIMM_MODELS
        available = set(timm.list_models())
        for name in names:
            if selected(name, only) and name in available:
                module = timm.models._registry._model_to_module.get(name, name)
                jobs.append(("timm", module, name, timm_builder(name, args.quick)))
    if args.part in ("all", "hf"):
        for family, make in hf_models().items():
            if (not args.quick or family in QUICK_HF) and selected(family, only):
                jobs.append(("hf", family, family, hf_builder(make)))
    rows: list[Row] = []
    for i, (part, family, name, build) in enumerate(jobs, 1):
        began = time.perf_counter()
        limit = args.limit if part == "timm" else args.hf_limit
        rows += survey_model(part, family, name, build, limit, args.libraries)
        mine = rows[-len(args.libraries) :]
        status = "  ".join(
            f"{r.library}: {'ok' if r.ran and r.shape_kept else 'FAIL'} "
            f"{r.flop_reduction:.2f}x" + (f" ({r.error[:80]})" if r.error else "")
            for r in mine
        )
        print(f"[{i}/{len(jobs)}] {name} ({time.perf_counter() - began:.0f} s) {status}",
              flush=True)  # fmt: skip
    run = {
        "command": " ".join([".venv-bench/bin/python", "benchmarks/coverage.py", *sys.argv[1:]]),
        "date": str(datetime.date.today()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "threads": torch.get_num_threads(),
        "source": source,
        "quick": args.quick,
        "elapsed": time.perf_counter() - started,
    }
    text = report(rows, run)
    write_atomically(args.out, text)
    if args.json:
        saved = [{**asdict(r), "flop_reduction": r.flop_reduction} for r in rows]
        write_atomically(args.json, json.dumps({"run": run, "rows": saved}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
