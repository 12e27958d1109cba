"""Pruning inside transformers.Trainer with one callback."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset

import sensiprune as sp

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")
from sensiprune.options import PruneOptions, StructuredOptions  # noqa: E402
from sensiprune.runs.callback import PruningCallback  # noqa: E402


class _Tokens(Dataset):
    """Sequences labelled by their first token: learnable, tiny, seeded."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 100, (96, 12), generator=generator)
        self.labels = (self.ids[:, 0] >= 50).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def _trainer(tmp_path, callback) -> transformers.Trainer:
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=32, num_labels=2,
    )  # fmt: skip
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=16, num_train_epochs=4,
        learning_rate=1e-3, report_to=[], save_strategy="no", logging_strategy="no",
        use_cpu=True, disable_tqdm=True, seed=0,
    )  # fmt: skip
    model = transformers.BertForSequenceClassification(config)
    return transformers.Trainer(
        model=model, args=args, train_dataset=_Tokens(), callbacks=[callback]
    )


def test_gradual_pruning_inside_trainer_train_keeps_pruned_weights_at_zero(tmp_path):
    dataset = _Tokens()
    batches = [
        {"input_ids": dataset.ids[i : i + 16], "labels": dataset.labels[i : i + 16]}
        for i in range(0, 48, 16)
    ]
    callback = PruningCallback(0.6, "taylor", data=batches, steps=4, end=0.5)
    trainer = _trainer(tmp_path, callback)
    trainer.train()
    steps = [step for step, _ in callback.history]
    assert steps == [0, 3, 6, 9]  # 24 optimiser steps; four events over the first half
    reached = [s for _, s in callback.history]
    assert reached == sorted(reached) and reached[-1] == pytest.approx(0.6, abs=1e-3)
    model = trainer.model
    params = dict(model.named_parameters())
    masks = sp.get_masks(model)
    assert masks and all((params[name][~keep] == 0).all() for name, keep in masks.items())


def test_structured_pruning_inside_training_is_refused():
    with pytest.raises(sp.SensipruneError, match="before train"):
        PruningCallback(0.5, options=PruneOptions(structured=StructuredOptions()))
    with pytest.raises(sp.SensipruneError, match="start <= end"):
        PruningCallback(0.5, start=0.8, end=0.2)
