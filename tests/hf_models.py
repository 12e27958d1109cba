"""Tiny randomly initialised Hugging Face models of each family the adapters know."""

from __future__ import annotations

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")


def bert_config(**extra: int) -> object:
    torch.manual_seed(0)
    return transformers.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=32, **extra,
    )  # fmt: skip


def tiny_bert() -> nn.Module:
    return transformers.BertModel(bert_config()).eval()


def tiny_classifier() -> nn.Module:
    """BERT with its pooler and a classification head: logits, not hidden states, come out."""
    return transformers.BertForSequenceClassification(bert_config(num_labels=3)).eval()


def tiny_vit() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.ViTConfig(
        image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=64, num_labels=3,
    )  # fmt: skip
    return transformers.ViTForImageClassification(config).eval()


def text_batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[0, 7:] = 0  # padding, as a tokenizer gives it
    return {
        "input_ids": torch.randint(0, 100, (3, 10), generator=generator),
        "attention_mask": mask,
    }


def bert_inputs(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    return batch["input_ids"], batch["attention_mask"]


def tiny_llama() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config).eval()


def tiny_decoder(family: str) -> nn.Module:
    """A randomly initialised decoder of a family with its own twist, two blocks deep."""
    torch.manual_seed(0)
    shared = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4)
    if family == "phi3":  # qkv_proj [Q K V] with 2 key/value heads, gate_up_proj
        config = transformers.Phi3Config(
            **shared, num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64,
            pad_token_id=0,
        )  # fmt: skip
        return transformers.Phi3ForCausalLM(config).eval()
    if family == "olmo":  # Llama-style blocks, LayerNorms without parameters
        config = transformers.OlmoConfig(
            **shared, num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64
        )
        return transformers.OlmoForCausalLM(config).eval()
    if family == "gpt-neox":  # query_key_value head by head
        config = transformers.GPTNeoXConfig(
            **shared, intermediate_size=64, max_position_embeddings=64
        )
        return transformers.GPTNeoXForCausalLM(config).eval()
    config = transformers.GPT2Config(  # Conv1D projections, c_attn [Q K V]
        vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_inner=64, n_positions=64
    )
    return transformers.GPT2LMHeadModel(config).eval()


def token_ids() -> torch.Tensor:
    return torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(2))
