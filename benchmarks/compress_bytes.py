"""Compress benchmark, file-size goals: ``sp.compress(target={"bytes": f})`` against iterative
global magnitude pruning (LAMP) at the sparsity that would give the same file were it spread
alike over the layers, both fine-tuned alike, on the bundled digits.

The goal counts the tensors ``sp.save`` writes (kept values, plus int16/int32 indices or a
bitmask per masked weight, whichever is smaller); the directory on disk adds a JSON manifest
and the safetensors header, reported beside; and the same pruned weights saved by
``torch.save`` as CSR tensors, a format a user might reach for.

Writes benchmarks/results/compress_bytes.md. Reproduce with:

    .venv/bin/python benchmarks/compress_bytes.py            # a few minutes on 2 cores
    .venv/bin/python benchmarks/compress_bytes.py --quick    # one model, fewer folds
"""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path

import torch
from common import finish, header, parser, trained_on_digits

import sensiprune as sp
from sensiprune.io.saving import saved_bytes
from sensiprune.measure import count_parameters
from sensiprune.size_goal import file_sparsity
from sensiprune.zoo import LeNet5, LeNet300100, load_digits_splits

# (model, its factory, fraction of the file kept)
GOALS = (("LeNet-300-100", LeNet300100, 1 / 20), ("LeNet-5", LeNet5, 1 / 10))


def saved_size(model: torch.nn.Module) -> int:
    """Bytes on disk of the directory ``sp.save`` writes for ``model``."""
    with tempfile.TemporaryDirectory() as folder:
        sp.save(model, Path(folder) / "model")
        return sum(f.stat().st_size for f in (Path(folder) / "model").iterdir())


def csr_size(model: torch.nn.Module) -> int:
    """Bytes of ``torch.save`` of the state, every 2-D or larger weight as a CSR tensor."""
    state = {
        k: v.reshape(v.shape[0], -1).to_sparse_csr() if k.endswith("weight") and v.dim() > 1
        else v
        for k, v in model.state_dict().items()
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        torch.save(state, Path(folder) / "state.pt")
        return (Path(folder) / "state.pt").stat().st_size


def rows(name, dense, data, kept, args) -> list[str]:
    folds, epochs = (2, 3) if args.quick else (5, 36)
    dense_acc = sp.evaluate(dense, data.test)
    dense_size, dense_tensors = saved_size(dense), saved_bytes(dense)
    found, results = [], []

    def compress(model: torch.nn.Module) -> None:
        results.append(sp.compress(model, data.train, data.val, {"bytes": kept},
                                   test_data=data.test, folds=folds,
                                   epochs_per_step=epochs))  # fmt: skip

    def magnitude(model: torch.nn.Module) -> None:
        sp.iterative_prune(model, file_sparsity(dense, kept), data.train, "magnitude", steps=3,
                           epochs_per_step=epochs // 3, scope="global")  # fmt: skip

    for label, method in (
        ("sp.compress, bytes goal (OBS, allocated, cross-validated)", compress),
        ("iterative magnitude in 3 steps, global LAMP, at the uniform file sparsity", magnitude),
    ):
        model = copy.deepcopy(dense)
        started = time.perf_counter()  # nothing cached
        method(model)
        found.append((label, model, time.perf_counter() - started))
    total = count_parameters(dense).total
    out = [
        "",
        f"**{name}**: dense test accuracy {dense_acc:.4f}, {total:,} parameters, "
        f"{dense_tensors:,} bytes of tensors ({dense_size:,} on disk); goal {1 / kept:.0f}x "
        f"fewer bytes. {epochs} epochs of Adam for both; compress {folds}-fold "
        "cross-validated.",
        "",
        "| method | parameters kept | tensor bytes | fewer | goal met | on disk | smaller on "
        "disk | torch.save CSR | test accuracy | drop (points) | seconds |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, model, seconds in found:
        size, tensors = saved_size(model), saved_bytes(model)
        accuracy = sp.evaluate(model, data.test)
        out.append(
            f"| {label} | {count_parameters(model).nonzero / total:.2%} | {tensors:,} | "
            f"{dense_tensors / tensors:.1f}x | "
            f"{'yes' if tensors <= kept * dense_tensors else 'no'} | {size:,} | "
            f"{dense_size / size:.1f}x | {csr_size(model):,} | {accuracy:.4f} | "
            f"{100 * (dense_acc - accuracy):+.2f} | {seconds:.0f} |"
        )
    return out


def main() -> None:
    args = parser(__doc__, "benchmarks/results/compress_bytes.md", "one model").parse_args()
    data = load_digits_splits(seed=args.seed)
    started = time.perf_counter()
    lines = header("Compress benchmark: file-size goals", "compress_bytes.py", args)
    lines.append(
        "Curves and folds on the validation split, fine-tuning on the training split, accuracy "
        "on the held-out test split. *tensor bytes*: what the goal counts (`saved_bytes`, "
        "the tensors of the file `sp.save` writes); *goal met*: at most that fraction of the "
        "dense model's; *on disk*: the whole directory, manifest and header included."
    )
    for name, factory, kept in GOALS[:1] if args.quick else GOALS:
        dense = trained_on_digits(factory, data, args.seed)
        lines += rows(name, dense, data, kept, args)
    finish(lines, args.out, started)


if __name__ == "__main__":
    main()
