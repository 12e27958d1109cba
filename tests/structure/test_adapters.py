"""Transformer blocks with a known layout: heads and FFN neurons pruned without tracing."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sensiprune as sp
from sensiprune.handlers.layouts import size_of
from sensiprune.runs.distill import embedding_distillation, sentence_embeddings
from sensiprune.structure.adapters import find_blocks, head_counts
from tests.hf_models import (
    bert_config,
    bert_inputs,
    text_batch,
    tiny_bert,
    tiny_decoder,
    tiny_llama,
    tiny_vit,
    token_ids,
)

transformers = pytest.importorskip("transformers")


def test_heads_and_ffn_neurons_shrink_and_the_model_stays_a_working_bert():
    model, batch = tiny_bert(), text_batch()
    result = sp.prune(model, {"heads": 0.5, "ffn": 0.25}, criterion="magnitude", structured=True,
                      example_inputs=bert_inputs(batch))  # fmt: skip
    for layer in model.encoder.layer:
        attention = layer.attention.self
        assert attention.num_attention_heads == 2 and attention.all_head_size == 16
        assert attention.query.out_features == attention.key.out_features == 16
        assert layer.attention.output.dense.in_features == 16
        assert layer.intermediate.dense.out_features == 48 == layer.output.dense.in_features
    assert result.flops_after < result.flops_before
    assert model(**batch).last_hidden_state.shape == (3, 10, 32)


def test_removing_heads_whose_gates_were_zeroed_leaves_outputs_unchanged():
    model, batch = tiny_bert(), text_batch()
    doomed = {0: [1, 3], 1: [0]}  # heads to remove, per layer; their outputs zeroed first
    with torch.no_grad():
        for index, heads in doomed.items():
            for head in heads:
                columns = slice(head * 8, (head + 1) * 8)
                model.encoder.layer[index].attention.output.dense.weight[:, columns] = 0
    expected = model(**batch).last_hidden_state
    scores = {n: torch.ones_like(p) for n, p in model.named_parameters()}
    for index, heads in doomed.items():
        dense = f"encoder.layer.{index}.attention.output.dense.weight"
        for head in heads:
            scores[dense][:, head * 8 : (head + 1) * 8] = 0  # these heads score lowest
    budget = {f"encoder.layer.{i}.attention.self.query": len(h) / 4 for i, h in doomed.items()}
    sp.prune(
        model,
        budget,
        criterion="magnitude",
        structured=True,
        example_inputs=bert_inputs(batch),
        scores=scores,
        group_reduction="sum",
    )
    assert [layer.attention.self.num_attention_heads for layer in model.encoder.layer] == [2, 3]
    torch.testing.assert_close(model(**batch).last_hidden_state, expected, atol=1e-5, rtol=0)


def test_a_pruned_bert_saves_and_loads_to_identical_embeddings(tmp_path):
    model, batch = tiny_bert(), text_batch()
    sp.prune(model, {"heads": 0.5, "ffn": 0.5}, criterion="magnitude", structured=True,
             example_inputs=bert_inputs(batch))  # fmt: skip
    sp.save(model, tmp_path / "pruned")
    loaded = sp.load(tmp_path / "pruned", tiny_bert)
    assert loaded.encoder.layer[1].attention.self.num_attention_heads == 2
    assert torch.equal(sentence_embeddings(loaded, batch), sentence_embeddings(model, batch))


class _OddAttention(nn.Module):
    """One head written out with matmuls: its query/key and value channels can be cut, but
    it has no heads to remove."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(16, 48)
        self.out = nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, -1)
        return self.out(F.softmax(q @ k.transpose(1, 2), -1) @ v)


def test_a_heads_budget_for_attention_without_heads_is_refused_and_channels_are_cut():
    model, x = (
        nn.Sequential(nn.Linear(8, 16), _OddAttention(), nn.Linear(16, 2)),
        torch.randn(2, 5, 8),
    )
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(sp.SensipruneError, match=r"no attention heads found"):
        sp.prune(model, {"heads": 0.5}, criterion="magnitude", structured=True, example_inputs=x)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    sp.prune(model, 0.5, criterion="magnitude", structured=True, example_inputs=x, scope="layer")
    assert model[1].qkv.out_features < 48 and model(x).shape == (2, 5, 2)


def test_distillation_is_zero_at_the_teacher_and_grows_when_pruned():
    model, batch = tiny_bert(), text_batch()
    loss = embedding_distillation(model)
    assert loss(model, batch).item() == pytest.approx(0.0, abs=1e-6)
    sp.prune(
        model,
        {"heads": 0.5},
        criterion="random",
        structured=True,
        example_inputs=bert_inputs(batch),
    )
    assert loss(model, batch).item() > 1e-6
    with pytest.raises(sp.SensipruneError, match="tokenised batches"):
        loss(model, (torch.zeros(2, 3),))


def test_only_transformer_blocks_are_taken_for_blocks():
    assert len(find_blocks(tiny_bert())) == 2
    assert find_blocks(nn.Sequential(nn.Linear(2, 2))) == []


def test_a_grouped_query_decoder_loses_whole_key_value_groups_and_still_generates(tmp_path):
    model, ids = (
        tiny_llama(),
        torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(2)),
    )
    sp.prune(
        model,
        {"heads": 0.5, "ffn": 0.5},
        criterion="magnitude",
        structured=True,
        example_inputs=(ids,),
    )
    for layer in model.model.layers:
        attention = layer.self_attn
        assert attention.k_proj.out_features == attention.v_proj.out_features == 8  # 1 of 2
        assert attention.q_proj.out_features == 16 == attention.o_proj.in_features  # its 2 heads
        assert attention.num_key_value_groups == 2
        mlp = layer.mlp
        assert (
            mlp.gate_proj.out_features
            == mlp.up_proj.out_features
            == 32
            == mlp.down_proj.in_features
        )
    assert model(ids).logits.shape == (2, 9, 100)
    generated = model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert generated.shape == (2, 12)  # rotary positions and the key/value cache still agree
    sp.save(model, tmp_path / "llama")
    loaded = sp.load(tmp_path / "llama", tiny_llama)
    assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_removing_a_zeroed_key_value_group_leaves_logits_unchanged():
    model, ids = (
        tiny_llama(),
        torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(2)),
    )
    with torch.no_grad():  # silence group 1: the output columns of query heads 2 and 3
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[:, 16:] = 0
    expected = model(ids).logits
    scores = {n: torch.ones_like(p) for n, p in model.named_parameters()}
    for i in range(2):
        scores[f"model.layers.{i}.self_attn.o_proj.weight"][:, 16:] = 0
    sp.prune(model, {"heads": 0.5}, criterion="magnitude", structured=True, example_inputs=(ids,),
             scores=scores, group_reduction="sum")  # fmt: skip
    assert model.model.layers[0].self_attn.q_proj.out_features == 16
    torch.testing.assert_close(model(ids).logits, expected, atol=1e-5, rtol=0)


def test_a_vision_transformer_loses_heads_and_mlp_neurons_and_still_sees():
    model = tiny_vit()
    pixels = torch.randn(2, 3, 16, 16)
    result = sp.prune(model, {"heads": 0.5, "ffn": 0.5}, criterion="magnitude", structured=True,
                      example_inputs=(pixels,))  # fmt: skip
    for layer in model.vit.layers:
        assert (
            layer.attention.num_attention_heads == 2 and layer.attention.q_proj.out_features == 16
        )
        assert layer.mlp.fc1.out_features == 32 == layer.mlp.fc2.in_features
    assert model(pixels).logits.shape == (2, 3) and result.flops_after < result.flops_before


def test_uniform_pruning_round_trips_through_save_pretrained_where_the_config_can_say_it(
    tmp_path, caplog
):
    llama, ids = (
        tiny_llama(),
        torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(2)),
    )
    sp.prune(
        llama,
        {"heads": 0.5, "ffn": 0.5},
        criterion="magnitude",
        structured=True,
        example_inputs=(ids,),
    )
    llama.save_pretrained(tmp_path / "llama")
    again = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "llama").eval()
    assert torch.equal(again(ids).logits, llama(ids).logits)

    bert, batch = tiny_bert(), text_batch()
    sp.prune(
        bert,
        {"ffn": 0.5},
        criterion="magnitude",
        structured=True,
        example_inputs=bert_inputs(batch),
    )
    bert.save_pretrained(tmp_path / "bert")
    assert transformers.BertModel.from_pretrained(tmp_path / "bert").config.intermediate_size == 32
    assert "cannot describe" not in caplog.text
    sp.prune(
        bert,
        {"heads": 0.5},
        criterion="magnitude",
        structured=True,
        example_inputs=bert_inputs(batch),
    )
    assert "derives the head size from the head count" in caplog.text  # sp.save, not HF's


def test_a_global_heads_budget_ranks_heads_across_layers_and_keeps_one_in_each():
    model, batch = tiny_bert(), text_batch()
    scores = {n: torch.ones_like(p) for n, p in model.named_parameters()}
    scores["encoder.layer.0.attention.output.dense.weight"].zero_()  # layer 0: unimportant
    sp.prune(
        model,
        {"heads": 0.5},
        criterion="magnitude",
        structured=True,
        example_inputs=bert_inputs(batch),
        scores=scores,
        scope="global",
        normalize="none",
        group_reduction="sum",
    )
    heads = [layer.attention.self.num_attention_heads for layer in model.encoder.layer]
    assert sum(heads) == 4 and heads[0] == 1 and heads[1] == 3  # 4 of 8 go, mostly layer 0's
    assert model.encoder.layer[1].intermediate.dense.out_features == 64  # FFN not budgeted


def test_head_gate_scores_are_the_gate_gradients_measured_by_finite_differences():
    config = bert_config(num_labels=3)
    # float64: the gradients of a random-init classifier are ~1e-6, beyond float32 differences
    model = transformers.BertForSequenceClassification(config).double().eval()
    batch = {**text_batch(), "labels": torch.tensor([0, 2, 1])}

    def loss_fn(m, b):
        return m(**b).loss

    scores = sp.score(model, "head_gate", [batch], loss_fn)
    for index, layer in enumerate(model.bert.encoder.layer):
        weight = layer.attention.output.dense.weight
        measured = []
        for head in range(4):
            columns = slice(head * 8, (head + 1) * 8)
            losses = []
            with torch.no_grad():
                for factor in (1 + 1e-4, 1 - 1e-4):  # scaling the head's output = its gate
                    saved = weight[:, columns].clone()
                    weight[:, columns] *= factor
                    losses.append(loss_fn(model, batch).item())
                    weight[:, columns] = saved
            measured.append(abs(losses[0] - losses[1]) / 2e-4)
        expected = torch.tensor(measured, dtype=torch.float64)
        got = scores[f"bert.encoder.layer.{index}.attention.output.dense::in"][::8]
        torch.testing.assert_close(got, expected / expected.norm(), atol=1e-6, rtol=1e-5)
    sp.prune(
        model,
        {"heads": 0.5},
        criterion="head_gate",
        data=[batch],
        loss_fn=loss_fn,
        structured=True,
        example_inputs=bert_inputs(batch),
    )
    heads = [layer.attention.self.num_attention_heads for layer in model.bert.encoder.layer]
    assert sum(heads) == 4 and min(heads) >= 1  # ranked across layers (the default scope)


FUSED = ["phi3", "gpt-neox", "gpt2"]


@pytest.mark.parametrize("family", FUSED)
def test_fused_projections_lose_heads_and_neurons_and_the_decoder_still_generates(family, tmp_path):
    model, ids = tiny_decoder(family), token_ids()
    blocks = find_blocks(model)
    assert len(blocks) == 2 and {b.adapter.family.split("-style")[0] for b in blocks} != {"Llama"}
    sp.prune(
        model,
        {"heads": 0.5, "ffn": 0.5},
        criterion="magnitude",
        structured=True,
        example_inputs=(ids,),
    )
    for block in find_blocks(model):
        query_heads, kv_heads, size = head_counts(block)
        assert query_heads == 2 and size == 8 and kv_heads == (1 if family == "phi3" else 2)
        output = block.module.get_submodule(block.adapter.output)
        assert size_of(output, "in") == 16
        assert size_of(block.module.get_submodule(block.adapter.ffn_out), "in") == 32
    assert model(ids).logits.shape == (2, 9, 100)
    generated = model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert generated.shape == (2, 12)  # the key/value cache agrees with the new head counts
    sp.save(model, tmp_path / family)
    loaded = sp.load(tmp_path / family, lambda: tiny_decoder(family))
    assert torch.equal(loaded(ids).logits, model(ids).logits)


@pytest.mark.parametrize("family", FUSED)
def test_removing_zeroed_heads_of_a_fused_projection_leaves_logits_unchanged(family):
    model, ids = tiny_decoder(family), token_ids()
    # silence the last key/value group of block 0 (Phi-3: query heads 2 and 3; else head 3)
    # and the first FFN neuron of block 1, then score exactly those lowest
    block0, block1 = find_blocks(model)
    query_heads, kv_heads, size = head_counts(block0)
    silent = slice((query_heads - query_heads // kv_heads) * size, query_heads * size)
    ffn_out = block1.module.get_submodule(block1.adapter.ffn_out)
    down = block1.path(block1.adapter.ffn_out) + ".weight"
    params = dict(model.named_parameters())
    scores = {n: torch.ones_like(p) for n, p in params.items()}
    with torch.no_grad():
        output = block0.path(block0.adapter.output) + ".weight"
        conv1d = family == "gpt2"  # weights stored (in, out)
        for name, columns in ((output, silent), (down, slice(0, 1))):
            where = (columns, slice(None)) if conv1d else (slice(None), columns)
            params[name][where] = 0
            scores[name][where] = 0
    expected = model(ids).logits
    budget = {
        block0.path(block0.adapter.head_layer): 1 / kv_heads,
        block1.path(block1.adapter.ffn_in[0]): 1 / size_of(ffn_out, "in"),
    }
    sp.prune(
        model,
        budget,
        criterion="magnitude",
        structured=True,
        example_inputs=(ids,),
        scores=scores,
        group_reduction="sum",
    )
    pruned0, kept1 = find_blocks(model)
    assert head_counts(pruned0)[0] == query_heads - query_heads // kv_heads
    assert head_counts(kept1)[0] == query_heads
    torch.testing.assert_close(model(ids).logits, expected, atol=1e-5, rtol=0)


def test_phi3_blocks_with_different_head_counts_get_their_own_config_and_load_back(tmp_path):
    model, ids = tiny_decoder("phi3"), token_ids()
    sp.prune(
        model,
        {"model.layers.0.self_attn.qkv_proj": 0.5},
        criterion="magnitude",
        structured=True,
        example_inputs=(ids,),
    )
    first, second = (layer.self_attn for layer in model.model.layers)
    assert first.config.num_attention_heads == 2 and first.num_key_value_heads == 1
    assert second.config is model.config and model.config.num_attention_heads == 4
    generated = model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert generated.shape == (2, 12)
    sp.save(model, tmp_path / "phi3")
    loaded = sp.load(tmp_path / "phi3", lambda: tiny_decoder("phi3"))
    assert loaded.model.layers[0].self_attn.config.num_attention_heads == 2
    assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_fused_families_say_where_save_pretrained_can_carry_the_shapes(tmp_path, caplog):
    phi3, ids = tiny_decoder("phi3"), token_ids()
    sp.prune(
        phi3,
        {"heads": 0.5, "ffn": 0.5},
        criterion="magnitude",
        structured=True,
        example_inputs=(ids,),
    )
    phi3.save_pretrained(tmp_path / "phi3")
    again = transformers.Phi3ForCausalLM.from_pretrained(tmp_path / "phi3").eval()
    assert torch.equal(again(ids).logits, phi3(ids).logits)
    assert "cannot describe" not in caplog.text
    gpt2 = tiny_decoder("gpt2")
    sp.prune(gpt2, {"ffn": 0.5}, criterion="magnitude", structured=True, example_inputs=(ids,))
    assert gpt2.config.n_inner == 32 and "cannot describe" not in caplog.text
    sp.prune(gpt2, {"heads": 0.5}, criterion="magnitude", structured=True, example_inputs=(ids,))
    assert "GPT-2-style decoder block config derives the head size" in caplog.text


def test_query_heads_go_inside_key_value_groups_and_every_group_keeps_as_many(tmp_path):
    model, ids = tiny_llama(), token_ids()
    sp.prune(
        model, {"query_heads": 0.5}, criterion="magnitude", structured=True, example_inputs=(ids,)
    )
    for layer in model.model.layers:
        attention = layer.self_attn
        assert attention.k_proj.out_features == attention.v_proj.out_features == 16  # both kept
        assert attention.q_proj.out_features == 16 == attention.o_proj.in_features
        assert attention.num_key_value_groups == 1
    generated = model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert generated.shape == (2, 12)
    sp.save(model, tmp_path / "sp")
    assert torch.equal(sp.load(tmp_path / "sp", tiny_llama)(ids).logits, model(ids).logits)
    model.save_pretrained(tmp_path / "hf")
    again = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert torch.equal(again(ids).logits, model(ids).logits)


@pytest.mark.parametrize("family", ["llama", "phi3"])  # separate q_proj, or [Q K V] fused
def test_the_least_important_query_head_of_each_group_goes_wherever_it_sits(family, tmp_path):
    factory = tiny_llama if family == "llama" else lambda: tiny_decoder("phi3")
    model, ids = factory(), token_ids()
    silent = {0: [0, 3], 1: [1, 2]}  # per layer, one query head in each key/value group
    scores = {n: torch.ones_like(p) for n, p in model.named_parameters()}
    with torch.no_grad():
        for index, heads in silent.items():
            name = f"model.layers.{index}.self_attn.o_proj.weight"
            for head in heads:
                model.get_parameter(name)[:, head * 8 : (head + 1) * 8] = 0
                scores[name][:, head * 8 : (head + 1) * 8] = 0
    expected = model(ids).logits
    sp.prune(
        model,
        {"query_heads": 0.5},
        criterion="magnitude",
        structured=True,
        example_inputs=(ids,),
        scores=scores,
        group_reduction="sum",
    )
    for block in find_blocks(model):
        assert head_counts(block) == (2, 2, 8)
        assert block.attention.num_key_value_groups == 1
    torch.testing.assert_close(model(ids).logits, expected, atol=1e-5, rtol=0)
    generated = model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert generated.shape == (2, 12)
    sp.save(model, tmp_path / family)
    assert torch.equal(sp.load(tmp_path / family, factory)(ids).logits, model(ids).logits)


def test_query_heads_need_grouped_query_attention_and_exclude_a_heads_budget():
    gpt2, ids = tiny_decoder("gpt2"), token_ids()
    with pytest.raises(sp.SensipruneError, match="needs grouped-query attention"):
        sp.prune(
            gpt2,
            {"query_heads": 0.5},
            criterion="magnitude",
            structured=True,
            example_inputs=(ids,),
        )
    llama = tiny_llama()
    with pytest.raises(sp.SensipruneError, match="not both"):
        sp.prune(llama, {"heads": 0.5, "query_heads": 0.5}, criterion="magnitude", structured=True,
                 example_inputs=(ids,))  # fmt: skip
    assert llama.model.layers[0].self_attn.q_proj.out_features == 32


@pytest.mark.parametrize(
    ("kind", "message"),
    [("ffn", "no feed-forward neurons found"), ("hidden", "'hidden' needs transformer blocks")],
)
def test_a_block_budget_on_a_model_without_blocks_is_refused(kind, message):
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(sp.SensipruneError, match=message):
        sp.prune(model, {kind: 0.5}, structured=True, example_inputs=torch.randn(2, 4))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
