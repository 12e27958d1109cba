"""Prune a model of your own with sensiprune, end to end, in about 12 s on 2 CPU cores.

    .venv/bin/python examples/prune_your_model.py

The model below stands in for yours: any nn.Module works, with your own batches and, if its
batches are not (inputs, labels), your own loss_fn(model, batch).
"""

from __future__ import annotations

import tempfile

import torch
from torch import nn

import sensiprune as sp
from sensiprune.measure import count_flops, latency
from sensiprune.zoo import load_digits_splits


class MyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
        )  # fmt: skip
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * 4, 128), nn.ReLU(), nn.Linear(128, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def main() -> None:
    torch.manual_seed(0)
    data = load_digits_splits()  # real handwritten digits that ship with scikit-learn
    model = MyNet()
    sp.finetune(model, data.train, epochs=15, show_progress=False)
    print(f"dense: test accuracy {sp.evaluate(model, data.test):.3f}")
    x = torch.cat([b[0] for b in data.test])

    # 1. How sensitive is each layer? Then spend a 90% budget where it costs least.
    table = sp.sensitivity(model, lambda m: sp.evaluate(m, data.val), [0.5, 0.8, 0.9, 0.95, 0.98])
    budget = sp.allocate(table, target_sparsity=0.9)
    print(table.to_markdown())

    # 2. Unstructured: OBS to that budget, moving the remaining weights to compensate.
    masked = MyNet()
    masked.load_state_dict(model.state_dict())
    print(sp.prune(masked, budget, criterion="obs", data=data.val))
    print(f"masked, one-shot: test accuracy {sp.evaluate(masked, data.test):.3f}")

    # 3. Structured: half the channels physically removed, then a short fine-tune.
    result = sp.prune(
        model, 0.5, criterion="taylor", data=data.val, structured=True, example_inputs=x[:1]
    )
    print(result)
    sp.finetune(model, data.train, epochs=3, show_progress=False)
    flops = count_flops(model, x[:1])
    print(
        f"shrunk and fine-tuned: test accuracy {sp.evaluate(model, data.test):.3f}, "
        f"{flops.dense:,} FLOPs per image, {1000 * latency(model, x):.2f} ms for the test set"
    )

    # 4. Save without pickle; load into a freshly built model (the new shapes are restored).
    with tempfile.TemporaryDirectory() as tmp:
        sp.save(model, tmp)
        again = sp.load(tmp, MyNet)
        print(f"reloaded: test accuracy {sp.evaluate(again, data.test):.3f}")


if __name__ == "__main__":
    main()
