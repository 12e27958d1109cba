"""The bundled digits and demo models."""

from __future__ import annotations

import torch

from sensiprune.zoo import LeNet5, LeNet5Caffe, LeNet300100


def test_digits_splits_are_disjoint_and_complete(digits):
    def rows(batches):
        return {(*x.flatten().tolist(), int(y)) for b in batches for x, y in zip(*b)}

    train, val, test = rows(digits.train), rows(digits.val), rows(digits.test)
    assert not (train & test) and not (val & test) and not (train & val)
    sizes = [sum(len(b[1]) for b in split) for split in (digits.train, digits.val, digits.test)]
    assert sum(sizes) == 1797
    assert sizes[2] == 360
    assert digits.train[0][0].shape[1:] == (1, 8, 8)


def test_demo_models_classify_digits(digits):
    x = digits.test[0][0]
    assert LeNet300100()(x).shape == (len(x), 10)
    assert LeNet5()(x).shape == (len(x), 10)
    assert sum(p.numel() for p in LeNet300100().parameters()) == 50_610
    assert torch.isfinite(LeNet5()(x)).all()


def test_lenet5_caffe_has_the_caffe_layers_sized_for_its_inputs(digits):
    x = digits.test[0][0]
    model = LeNet5Caffe()
    assert model(x).shape == (len(x), 10)
    assert sum(p.numel() for p in model.parameters()) == 131_080
    assert [type(m).__name__ for m in model.children()] == [
        "Conv2d", "Conv2d", "MaxPool2d", "Linear", "Linear"
    ]  # fmt: skip
