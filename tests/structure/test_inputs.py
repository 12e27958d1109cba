"""Example inputs as a dict of keyword arguments, positional tensors plus a dict, or taken
from the first batch of data."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sensiprune as sp
from sensiprune.structure.inputs import example_arguments


class Masked(nn.Module):
    """A forward with keyword arguments after the input, as Hugging Face models have."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 32), nn.Linear(32, 3)

    def forward(
        self, x: torch.Tensor, scale: float = 2.0, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        h = torch.relu(self.fc1(x)) * scale
        return self.fc2(h if mask is None else h * mask)


def test_keyword_arguments_land_in_forward_order_with_defaults_between():
    model, x, mask = Masked(), torch.randn(4, 8), torch.ones(4, 1)
    assert example_arguments(model, {"mask": mask, "x": x}) == [x, 2.0, mask]
    assert example_arguments(model, (x, {"mask": mask})) == [x, 2.0, mask]
    assert example_arguments(model, x) == [x]


@pytest.mark.parametrize(
    "example, message",
    [
        ({"mask": torch.ones(4, 1)}, "lack 'x'"),
        ({"y": torch.ones(4, 8)}, "do not fit Masked.forward"),
        ((torch.ones(4, 8), "text"), "must be a tensor"),
    ],
)
def test_inputs_that_do_not_fit_the_forward_are_refused_in_one_line(example, message):
    with pytest.raises(sp.SensipruneError, match=message):
        example_arguments(Masked(), example)


@pytest.mark.parametrize("how", ["dict", "tuple and dict", "first batch"])
def test_structured_prune_takes_inputs_the_way_they_come(how):
    torch.manual_seed(0)
    model, x, mask = Masked().eval(), torch.randn(4, 8), torch.ones(4, 1)
    batches = [((x, {"mask": mask}), torch.zeros(4, dtype=torch.long))]
    example = {"dict": {"x": x, "mask": mask}, "tuple and dict": (x, {"mask": mask})}.get(how)
    data = [{"x": x, "mask": mask}] if how == "first batch" else batches
    expected = model(x, mask=mask).shape
    result = sp.prune(model, 0.5, structured=True, example_inputs=example, data=data)
    assert model.fc1.out_features == 16 and model(x, mask=mask).shape == expected
    assert result.params_after < result.params_before


def test_a_generator_of_batches_is_read_once_for_inputs_and_scores():
    torch.manual_seed(0)
    model, x = Masked().eval(), torch.randn(4, 8)
    batches = ((x, torch.zeros(4, dtype=torch.long)) for _ in range(2))
    sp.prune(model, 0.25, criterion="taylor", structured=True, data=batches)
    assert model.fc1.out_features == 24


@pytest.mark.parametrize("given", ["dict", "batches"])
def test_a_hugging_face_model_takes_its_tokenizer_output_as_it_comes(given):
    pytest.importorskip("transformers")
    from tests.hf_models import text_batch, tiny_bert

    model, batch = tiny_bert(), text_batch()
    example, data = (batch, None) if given == "dict" else (None, [batch])
    sp.prune(model, {"heads": 0.5, "ffn": 0.25}, criterion="magnitude", structured=True,
             example_inputs=example, data=data)  # fmt: skip
    assert model.encoder.layer[0].attention.self.num_attention_heads == 2
    assert model(**batch).last_hidden_state.shape == (3, 10, 32)
