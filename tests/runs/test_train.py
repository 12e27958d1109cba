"""Fine-tuning and evaluation loops."""

from __future__ import annotations

import pytest
import torch

import sensiprune as sp


def test_finetune_learns_and_keeps_pruned_weights_zero(mlp, mlp_batches):
    sp.prune(mlp, 0.5, criterion="magnitude")
    zero = ~sp.get_masks(mlp)["fc1.weight"]
    before = sp.evaluate(mlp, mlp_batches)
    result = sp.finetune(mlp, mlp_batches, epochs=30, lr=1e-2, show_progress=False)
    assert result.epoch_losses[-1] < result.epoch_losses[0]
    assert sp.evaluate(mlp, mlp_batches) > before
    assert (mlp.fc1.weight[zero] == 0).all()
    assert "fine-tuned 90 steps" in str(result)


def test_a_loss_that_turns_nan_stops_training_with_the_last_good_weights(mlp, mlp_batches):
    calls = {"n": 0}

    def loss_fn(model, batch):
        calls["n"] += 1
        loss = torch.nn.functional.cross_entropy(model(batch[0]), batch[1])
        return loss * float("nan") if calls["n"] == 3 else loss

    with pytest.raises(sp.SensipruneError, match="became nan at epoch 1, step 3"):
        sp.finetune(mlp, mlp_batches, epochs=2, loss_fn=loss_fn, show_progress=False)
    assert all(torch.isfinite(p).all() for p in mlp.parameters())


def test_a_nan_stop_puts_back_the_batchnorm_statistics_of_the_last_good_step():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8),
                                torch.nn.ReLU(), torch.nn.Linear(8, 3))  # fmt: skip
    batches = [(torch.randn(16, 4), torch.randint(0, 3, (16,))) for _ in range(4)]
    batches[2] = (batches[2][0] * float("inf"), batches[2][1])  # its forward poisons the stats
    seen = []

    def loss_fn(model, batch):
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
        return torch.nn.functional.cross_entropy(model(batch[0]), batch[1])

    with pytest.raises(sp.SensipruneError, match="became nan at epoch 1, step 3"):
        sp.finetune(model, batches, loss_fn=loss_fn, show_progress=False)
    assert all(torch.equal(v, seen[2][k]) for k, v in model.state_dict().items())
    model.eval()
    assert torch.isfinite(model(batches[0][0])).all()


def test_a_gradient_that_is_not_finite_stops_before_the_step(mlp, mlp_batches):
    before = {k: v.clone() for k, v in mlp.state_dict().items()}

    def loss_fn(model, batch):  # finite value, infinite slope: sqrt at 0
        logits = model(batch[0])
        return torch.nn.functional.cross_entropy(logits, batch[1]) + (logits * 0).sum().sqrt()

    with pytest.raises(
        sp.SensipruneError, match="gradient stopped being finite at epoch 1, step 1"
    ):
        sp.finetune(mlp, mlp_batches, loss_fn=loss_fn, show_progress=False)
    assert all(torch.equal(v, before[k]) for k, v in mlp.state_dict().items())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epochs": -1}, "epochs"),
        ({"lr": 0}, "lr must be positive"),
        ({"data": []}, "no batches"),
        ({"lr_schedule": "linear"}, "lr_schedule must be one of constant, cosine"),
    ],
)
def test_finetune_bad_input(mlp, mlp_batches, kwargs, message):
    args = {"data": mlp_batches, **kwargs}
    with pytest.raises(sp.SensipruneError, match=message):
        sp.finetune(mlp, show_progress=False, **args)


def test_a_cosine_schedule_lowers_the_rate_each_epoch_and_puts_it_back(mlp, mlp_batches):
    optimizer = torch.optim.SGD(mlp.parameters(), lr=0.1)
    seen = []

    def loss_fn(model, batch):
        seen.append(optimizer.param_groups[0]["lr"])
        return torch.nn.functional.cross_entropy(model(batch[0]), batch[1])

    result = sp.finetune(mlp, mlp_batches, epochs=4, optimizer=optimizer, loss_fn=loss_fn,
                         lr_schedule="cosine", show_progress=False)  # fmt: skip
    per_epoch = seen[:: len(mlp_batches)]
    assert per_epoch == pytest.approx([0.1, 0.1 * (1 + 2**-0.5) / 2, 0.05, 0.1 * (1 - 2**-0.5) / 2])
    assert result.epoch_losses[-1] < result.epoch_losses[0]
    assert optimizer.param_groups[0]["lr"] == 0.1


def test_evaluate_is_accuracy_by_default(mlp, mlp_batches):
    x = torch.cat([b[0] for b in mlp_batches])
    y = torch.cat([b[1] for b in mlp_batches])
    expected = (mlp(x).argmax(1) == y).float().mean().item()
    assert sp.evaluate(mlp, mlp_batches) == pytest.approx(expected)
    with pytest.raises(sp.SensipruneError, match="no samples"):
        sp.evaluate(mlp, [])


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        ((torch.randn(4, 8), torch.tensor([0, 1, 7, 2])), "labels range from 0 to 7"),
        ((torch.randn(4, 5), torch.tensor([0, 1, 1, 2])), r"fails on a batch of inputs \(4, 5\)"),
    ],
)
def test_labels_out_of_range_and_inputs_of_the_wrong_width_are_one_line(mlp, batch, message):
    for call in (
        lambda: sp.finetune(mlp, [batch], show_progress=False),
        lambda: sp.evaluate(mlp, [batch]),
        lambda: sp.prune(mlp, 0.5, criterion="taylor", data=[batch]),
    ):
        with pytest.raises(sp.SensipruneError, match=message):
            call()
