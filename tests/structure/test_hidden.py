"""Hidden-size pruning: the residual stream of transformer blocks loses whole channels."""

from __future__ import annotations

import copy

import pytest
import torch

import sensiprune as sp
from tests.hf_models import (
    bert_inputs,
    text_batch,
    tiny_bert,
    tiny_classifier,
    tiny_decoder,
    tiny_llama,
    tiny_vit,
    token_ids,
    transformers,
)

FAMILIES = {
    "llama": tiny_llama,
    "phi3": lambda: tiny_decoder("phi3"),
    "gpt-neox": lambda: tiny_decoder("gpt-neox"),
    "gpt2": lambda: tiny_decoder("gpt2"),  # its head is tied to the token embedding
    "olmo": lambda: tiny_decoder("olmo"),  # norms with no parameters, only a shape
    "bert-classifier": tiny_classifier,  # a pooler between the stream and the head
}


def _outputs(model: torch.nn.Module, family: str) -> torch.Tensor:
    if family == "bert-classifier":
        return model(**text_batch()).logits
    return model(token_ids()).logits


def _example(family: str) -> tuple[torch.Tensor, ...]:
    return bert_inputs(text_batch()) if family == "bert-classifier" else (token_ids(),)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_the_model_dimension_shrinks_everywhere_and_the_model_still_runs(family, tmp_path):
    factory = FAMILIES[family]
    model = factory()
    before = sum(p.numel() for p in model.parameters())
    dense_shape = _outputs(model, family).shape
    sp.prune(model, {"hidden": 0.25}, criterion="magnitude", structured=True,
             example_inputs=_example(family))  # fmt: skip
    assert model.config.hidden_size == 24
    assert model.get_input_embeddings().weight.shape[1] == 24
    assert sum(p.numel() for p in model.parameters()) < before
    assert _outputs(model, family).shape == dense_shape
    if family != "bert-classifier":
        generated = model.generate(token_ids(), max_new_tokens=3, do_sample=False, pad_token_id=0)
        assert generated.shape == (2, 12)
    if family == "gpt2":
        assert model.lm_head.weight is model.transformer.wte.weight  # still tied
    sp.save(model, tmp_path / family)
    loaded = sp.load(tmp_path / family, factory)
    assert torch.equal(_outputs(loaded, family), _outputs(model, family))


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert-classifier"])
def test_the_channels_that_score_lowest_are_the_ones_removed(family):
    model = FAMILIES[family]()
    embedding = model.get_input_embeddings().weight
    original = embedding.detach().clone()
    scores = {n: torch.ones_like(p) for n, p in model.named_parameters()}
    name = next(n for n, p in model.named_parameters() if p is embedding)
    scores[name][:, 3:11] = 0  # residual channels 3..10 matter least
    sp.prune(model, {"hidden": 0.25}, criterion="magnitude", structured=True, scores=scores,
             example_inputs=_example(family), group_reduction="sum")  # fmt: skip
    kept = [j for j in range(32) if not 3 <= j < 11]
    assert torch.equal(model.get_input_embeddings().weight, original[:, kept])


def test_llama_with_a_pruned_hidden_size_round_trips_through_save_pretrained(tmp_path):
    model, ids = tiny_llama(), token_ids()
    sp.prune(model, {"hidden": 0.25, "heads": 0.5}, criterion="magnitude", structured=True,
             example_inputs=(ids,))  # fmt: skip
    model.save_pretrained(tmp_path / "llama")
    again = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "llama").eval()
    assert torch.equal(again(ids).logits, model(ids).logits)


def test_a_model_that_returns_its_hidden_states_is_refused_unchanged():
    model = tiny_bert()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(sp.SensipruneError, match="returns its hidden states"):
        sp.prune(model, {"hidden": 0.25}, criterion="magnitude", structured=True,
                 example_inputs=bert_inputs(text_batch()))  # fmt: skip
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_parameter_of_the_model_width_it_cannot_place_is_named_and_nothing_changes():
    model = tiny_vit()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(sp.SensipruneError, match=r"cannot prune the hidden size: vit\.embeddings"):
        sp.prune(model, {"hidden": 0.25}, criterion="magnitude", structured=True,
                 example_inputs=(torch.randn(2, 3, 16, 16),))  # fmt: skip
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_width_derived_embedding_scale_is_reported_for_save_pretrained(caplog):
    torch.manual_seed(0)
    config = transformers.GemmaConfig(  # embeddings scaled by √hidden_size, fixed when built
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=64, head_dim=8,
    )  # fmt: skip
    model, ids = transformers.GemmaForCausalLM(config).eval(), token_ids()
    sp.prune(model, {"hidden": 0.25}, criterion="magnitude", structured=True, example_inputs=(ids,))
    assert "scales its embeddings by a function of the width" in caplog.text
    assert model.generate(ids, max_new_tokens=2, do_sample=False, pad_token_id=0).shape == (2, 11)
