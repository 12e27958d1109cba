"""Masks hold through optimiser steps, copies and make_permanent."""

from __future__ import annotations

import copy

import pytest
import torch

import sensiprune as sp


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3),
        lambda p: torch.optim.Adam(p, lr=0.01),
        lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1),
        lambda p: torch.optim.AdamW(p, lr=0.01, fused=True),  # no version bump on update
    ],
    ids=["sgd-momentum-wd", "adam", "adamw", "adamw-fused"],
)
def test_masks_survive_50_optimizer_steps(mlp, mlp_batches, make_optimizer):
    optimizer = make_optimizer(mlp.parameters())
    # momentum state from before pruning must not revive pruned weights
    for x, y in mlp_batches:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(mlp(x), y).backward()
        optimizer.step()
    sp.prune(mlp, 0.7, criterion="magnitude")
    zero = {n: ~m for n, m in sp.get_masks(mlp).items()}
    params = dict(mlp.named_parameters())
    for step in range(50):
        x, y = mlp_batches[step % len(mlp_batches)]
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(mlp(x), y).backward()
        optimizer.step()
        for name, where in zero.items():
            assert (params[name].detach()[where] == 0).all(), (step, name)


def test_forward_reapplies_mask_after_manual_edit(mlp, mlp_batches):
    sp.prune(mlp, 0.5, criterion="magnitude")
    keep = sp.get_masks(mlp)["fc1.weight"]
    with torch.no_grad():
        mlp.fc1.weight.add_(1.0)
    mlp(mlp_batches[0][0])
    assert (mlp.fc1.weight[~keep] == 0).all()


def test_deepcopy_keeps_masks(mlp):
    sp.prune(mlp, 0.5, criterion="magnitude")
    clone = copy.deepcopy(mlp)
    original = sp.get_masks(mlp)
    copied = sp.get_masks(clone)
    assert set(copied) == set(original)
    assert all(torch.equal(copied[k], original[k]) for k in original)


def test_make_permanent_removes_masks_and_keeps_zeros(mlp, mlp_batches):
    sp.prune(mlp, 0.5, criterion="magnitude")
    zeros = (mlp.fc1.weight == 0).sum()
    sp.make_permanent(mlp)
    assert sp.get_masks(mlp) == {}
    assert (mlp.fc1.weight == 0).sum() == zeros
    sp.finetune(mlp, mlp_batches, epochs=1, show_progress=False)
    assert (mlp.fc1.weight == 0).sum() < zeros  # free to train again


def test_pruning_twice_only_shrinks_masks(mlp):
    sp.prune(mlp, 0.3, criterion="random", seed=1)
    first = sp.get_masks(mlp)
    sp.prune(mlp, 0.6, criterion="random", seed=2)
    for name, keep in sp.get_masks(mlp).items():
        assert not (keep & ~first[name]).any()


def test_masked_training_under_torch_compile_keeps_pruned_weights_zero(digits):
    """aot_eager traces what inductor compiles; the inductor run itself is a slow test."""
    from sensiprune.zoo import LeNet5

    torch.manual_seed(0)
    model = LeNet5()
    sp.prune(model, 0.8)
    compiled = torch.compile(model, backend="aot_eager")
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for x, y in digits.train[:4]:
        loss = torch.nn.functional.cross_entropy(compiled(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    params = dict(model.named_parameters())
    for name, keep in sp.get_masks(model).items():
        assert (params[name][~keep] == 0).all()
    model.eval()
    x = digits.val[0][0]
    assert torch.equal(compiled(x), model(x))


@pytest.mark.parametrize("shape", [(7,), (3, 5), (4, 3, 3, 3), (1, 1)])
def test_masks_are_held_as_bits_and_unpack_to_what_was_packed(shape):
    from sensiprune.apply.masks import pack, unpack

    keep = torch.rand(shape, generator=torch.Generator().manual_seed(0)) > 0.5
    packed = pack(keep)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-keep.numel() // 8)
    assert torch.equal(unpack(packed, keep.shape), keep)


def test_a_masked_model_holds_one_bit_per_masked_weight(mlp):
    sp.prune(mlp, 0.5, criterion="magnitude")
    weights = sum(m.numel() for m in sp.get_masks(mlp).values())
    buffers = sum(b.numel() for n, b in mlp.named_buffers() if "_sensiprune_mask_" in n)
    assert buffers == sum(-(-m.numel() // 8) for m in sp.get_masks(mlp).values())
    assert buffers * 8 < weights + 8 * len(sp.get_masks(mlp))
    half = copy.deepcopy(mlp).to(torch.bfloat16)  # a dtype change leaves the bits alone
    assert all(torch.equal(a, b) for a, b in zip(sp.get_masks(half).values(),
                                                 sp.get_masks(mlp).values()))  # fmt: skip
