"""Budgets for heads and feed-forward neurons of models no adapter knows, from their graph."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sensiprune as sp
from tests.hf_models import text_batch, transformers


class _Block(nn.Module):
    """A pre-norm transformer block from functional ops, in no layout sensiprune knows."""

    def __init__(self, width: int = 16, heads: int = 4, hidden: int = 32) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(width)
        self.to_qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.up = nn.Linear(width, hidden)
        self.down = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        qkv = self.to_qkv(self.norm(x)).reshape(b, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, -1)
        x = x + self.proj(attended)
        return x + self.down(F.gelu(self.up(x)))


class _Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.blocks = nn.ModuleList(_Block() for _ in range(2))
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(1))


def test_heads_and_ffn_of_a_custom_transformer_are_found_in_its_graph():
    torch.manual_seed(0)
    model, x = _Encoder(), torch.randn(2, 5, 8)
    result = sp.prune(model, {"heads": 0.5, "ffn": 0.5}, criterion="magnitude", structured=True,
                      example_inputs=x, scope="layer")  # fmt: skip
    for block in model.blocks:
        assert block.heads == 2 and block.to_qkv.out_features == 3 * 2 * 4
        assert block.proj.in_features == 8 and block.up.out_features == 16
        assert block.proj.out_features == 16  # the residual stream is not in the budget
    assert model.embed.out_features == 16 and result.flops_after < result.flops_before
    assert model(x).shape == (2, 3)


def test_a_heads_budget_alone_leaves_the_feed_forward_networks():
    torch.manual_seed(0)
    model, x = _Encoder(), torch.randn(2, 5, 8)
    sp.prune(model, {"heads": 0.5}, criterion="magnitude", structured=True, example_inputs=x)
    assert sum(b.heads for b in model.blocks) == 4  # global: half of all heads
    assert all(b.up.out_features == 32 for b in model.blocks)


def _distilbert() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.DistilBertConfig(
        vocab_size=100, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
        max_position_embeddings=32, num_labels=3,
    )  # fmt: skip
    return transformers.DistilBertForSequenceClassification(config).eval()


def test_a_hugging_face_model_without_an_adapter_prunes_heads_and_ffn_and_reloads(tmp_path):
    model, batch = _distilbert(), text_batch()
    dense_shape = model(**batch).logits.shape
    sp.prune(model, {"heads": 0.25, "ffn": 0.5}, criterion="magnitude", structured=True,
             example_inputs=batch, scope="layer")  # fmt: skip
    for layer in model.distilbert.transformer.layer:
        assert layer.attention.q_lin.out_features == 24 and layer.attention.n_heads == 3
        assert layer.ffn.lin1.out_features == 32
    assert model.distilbert.embeddings.word_embeddings.embedding_dim == 32
    logits = model(**batch).logits
    assert logits.shape == dense_shape
    sp.save(model, tmp_path / "pruned")
    loaded = sp.load(tmp_path / "pruned", _distilbert)
    torch.testing.assert_close(loaded(**batch).logits, logits)


def test_no_heads_in_the_graph_is_refused_before_anything_changes():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(sp.SensipruneError, match="no attention heads found"):
        sp.prune(model, {"heads": 0.5}, structured=True, example_inputs=torch.randn(2, 8))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


class _TiedLanguageModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.blocks = nn.ModuleList(_Block() for _ in range(2))
        self.head = nn.Linear(16, 50, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def test_layers_the_cut_does_not_reach_keep_their_parameters_and_ties():
    torch.manual_seed(0)
    model, ids = _TiedLanguageModel(), torch.randint(0, 50, (2, 7))
    embedding = model.embed.weight
    before = sum(p.numel() for p in model.parameters())
    sp.prune(
        model,
        {"heads": 0.5, "ffn": 0.5},
        criterion="magnitude",
        structured=True,
        example_inputs=ids,
    )
    assert model.embed.weight is embedding and model.head.weight is embedding
    assert sum(p.numel() for p in model.parameters()) < before


def test_a_known_layout_that_misses_a_bias_table_per_head_falls_back_to_the_graph():
    torch.manual_seed(0)
    config = transformers.SwinConfig(
        image_size=16, patch_size=2, embed_dim=16, depths=[1, 1], num_heads=[2, 4],
        window_size=4, num_labels=3,
    )  # fmt: skip
    model = transformers.SwinForImageClassification(config).eval()
    images = torch.randn(2, 3, 16, 16)
    sp.prune(model, {"heads": 0.5, "ffn": 0.5}, criterion="magnitude", structured=True,
             example_inputs={"pixel_values": images}, scope="layer")  # fmt: skip
    for stage, heads in zip(model.swin.encoder.layers, (1, 2)):
        attention = stage.blocks[0].attention
        table = attention.relative_position_bias.relative_position_bias_table
        assert attention.q_proj.out_features == heads * attention.head_dim
        assert table.shape[1] == heads
    assert model(pixel_values=images).logits.shape == (2, 3)


def test_the_config_follows_a_uniform_cut_where_it_can_say_so(tmp_path, caplog):
    model, batch = _distilbert(), text_batch()
    sp.prune(model, {"ffn": 0.5}, criterion="magnitude", structured=True, example_inputs=batch,
             scope="layer")  # fmt: skip
    assert model.config.hidden_dim == 32 and model.config.max_position_embeddings == 32
    model.save_pretrained(tmp_path / "ffn")
    again = type(model).from_pretrained(tmp_path / "ffn").eval()
    torch.testing.assert_close(again(**batch).logits, model(**batch).logits)
    heads = _distilbert()  # DistilBERT's head size is the width over the head count
    sp.prune(heads, {"heads": 0.25}, criterion="magnitude", structured=True, example_inputs=batch)
    assert heads.config.n_heads == 4 and "sp.save" in caplog.text
