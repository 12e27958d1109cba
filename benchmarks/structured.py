"""Structured pruning benchmark: FLOPs, measured latency, a peer library, and accuracy.

Writes benchmarks/results/structured.md. Reproduce with:

    .venv/bin/pip install torch-pruning==1.6.1     # the peer; a benchmark-only dependency
    .venv/bin/python benchmarks/structured.py      # a few minutes on 2 cores
"""

from __future__ import annotations

import copy
import statistics
import time
from importlib import metadata

import torch
from common import finish, header, parser, spin_threads, trained_on_digits
from torch import nn

import sensiprune as sp
from sensiprune.measure import count_flops, speedup
from sensiprune.selection.groups import vector_width
from sensiprune.zoo import LeNet5, load_digits_splits


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=False),
    ]


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*conv_bn(cin, cout, 3, stride), *conv_bn(cout, cout)[:2])
        self.skip = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


class ResNet18Style(nn.Module):
    """A CIFAR-sized ResNet: 4 stages of 2 basic blocks, widths 32-256."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        widths = [32, 64, 128, 256]
        layers: list[nn.Module] = [nn.Sequential(*conv_bn(3, widths[0]))]
        cin = widths[0]
        for i, w in enumerate(widths):
            layers += [Block(cin, w, 1 if i == 0 else 2), Block(w, w, 1)]
            cin = w
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3)))


class Inverted(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int = 6) -> None:
        super().__init__()
        hidden = cin * expand
        self.residual = stride == 1 and cin == cout
        self.body = nn.Sequential(
            *conv_bn(cin, hidden, 1),
            *conv_bn(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


class MobileNetV2Style(nn.Module):
    """A CIFAR-sized MobileNetV2: inverted residuals with depthwise convolutions."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        config = [(16, 1), (24, 2), (24, 1), (32, 2), (32, 1), (64, 2), (64, 1), (96, 1)]
        layers: list[nn.Module] = [nn.Sequential(*conv_bn(3, 32))]
        cin = 32
        for cout, stride in config:
            layers.append(Inverted(cin, cout, stride))
            cin = cout
        layers.append(nn.Sequential(*conv_bn(cin, 320, 1)))
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(320, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3)))


def prune_ours(model: nn.Module, sparsity: float, x: torch.Tensor, round_to: int | str) -> None:
    sp.prune(
        model,
        sparsity,
        criterion="magnitude",
        structured=True,
        example_inputs=x,
        scope="layer",
        ignore=[model.fc],
        round_to=round_to,
    )


def prune_peer(model: nn.Module, sparsity: float, x: torch.Tensor, round_to: int | str) -> None:
    import torch_pruning as tp

    multiple = vector_width(model) if round_to == "auto" else round_to
    pruner = tp.pruner.MagnitudePruner(
        model, x, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=sparsity,
        ignored_layers=[model.fc], round_to=multiple if multiple > 1 else None,
    )  # fmt: skip
    pruner.step()


def pruned(prunes: list, dense: nn.Module, sparsity: float, x: torch.Tensor, round_to, times: int):
    """The model each of ``prunes`` makes of a copy of ``dense``, and the median seconds each
    took over ``times`` fresh copies. The prunes take turns, so that a slow spell of a noisy
    machine falls on all of them alike."""
    seconds: list[list[float]] = [[] for _ in prunes]
    models: list[nn.Module] = []
    for _ in range(times):
        models = []
        for prune, timings in zip(prunes, seconds, strict=True):
            model = copy.deepcopy(dense)
            start = time.perf_counter()
            prune(model, sparsity, x, round_to)
            timings.append(time.perf_counter() - start)
            models.append(model)
    return [(model, statistics.median(t)) for model, t in zip(models, seconds, strict=True)]


def traffic(model: nn.Module, x: torch.Tensor) -> int:
    """Elements every layer reads and writes in one forward pass (its input, output and
    parameters): the memory traffic, which falls only linearly with the channels, while
    FLOPs fall quadratically."""
    total = [0]

    def count(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if not list(module.children()):
            own = sum(p.numel() for p in module.parameters(recurse=False))
            total[0] += inputs[0].numel() + output.numel() + own

    hook = nn.modules.module.register_module_forward_hook(count)
    try:
        with torch.no_grad():
            model(x)
    finally:
        hook.remove()
    return total[0]


def speed_table(rounds: int, passes: int, with_peer: bool, prunes: int) -> list[str]:
    out = [
        "## FLOPs and measured CPU latency (input 3x32x32)",
        "",
        'Uniform channel sparsity per layer (`scope="layer"`, L1 magnitude), classifier kept; '
        f'`round_to` 1 (none), 8 and `"auto"` ({vector_width(nn.Linear(1, 1))} fp32 '
        f"channels: one {torch.backends.cpu.get_cpu_capability()} vector here). Speed-up: "
        "`sensiprune.measure.speedup`, the pruned and the dense model timed in alternation "
        f"({rounds} rounds of 10 runs each, {torch.get_num_threads()} threads, eval mode, "
        f"no_grad), measured in {passes} passes over every configuration, minutes apart: the "
        "cell is the median pass and *range* the lowest and highest (on this shared machine "
        "the same pair of models moves by up to 40% from one minute to the next). "
        "*efficiency* = speed-up / FLOP reduction at batch 32 (target ≥ 0.9). *traffic "
        "reduction*: how much less the layers read and write (inputs, outputs, weights); it "
        "falls linearly with the channels where FLOPs fall quadratically, and a memory-bound "
        f"model's speed-up follows it. Prune time: median of {prunes} prunes of fresh copies, "
        "the two libraries taking turns, graph building included; ours also counts FLOPs "
        "before and after and runs the pruned model once to check its output shapes.",
        "",
        "| model | sparsity | round_to | params | FLOP reduction | traffic reduction "
        "| speed-up b1 | speed-up b32 | range b32 | efficiency b32 | prune time (ms) "
        "| peer prune time (ms) | peer FLOP reduction | peer speed-up b32 | peer runs |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    x1, x32 = torch.randn(1, 3, 32, 32), torch.randn(32, 3, 32, 32)
    rows = []  # (name, dense, sparsity, round_to, [(model, prune seconds)])
    for name, factory in (
        ("ResNet-18-style", ResNet18Style),
        ("MobileNetV2-style", MobileNetV2Style),
    ):
        torch.manual_seed(0)
        dense = factory().eval()
        for sparsity in (0.3, 0.5, 0.7):
            for round_to in (1, 8, "auto"):
                made = pruned(
                    [prune_ours, prune_peer] if with_peer else [prune_ours],
                    dense, sparsity, x1, round_to, prunes,
                )  # fmt: skip
                rows.append((name, dense, sparsity, round_to, made))
    timings: list[list[tuple[float, ...]]] = [[] for _ in rows]
    for _ in range(passes):
        for row, timed in zip(rows, timings, strict=True):
            dense, made = row[1], row[4]
            b1, b32 = (speedup(dense, made[0][0], x, rounds=rounds) for x in (x1, x32))
            peer_b32 = speedup(dense, made[1][0], x32, rounds=rounds) if with_peer else 0.0
            timed.append((b1, b32, peer_b32))
    seen = set()
    for (name, dense, sparsity, round_to, made), timed in zip(rows, timings, strict=True):
        base, base_traffic = count_flops(dense, x1).dense, traffic(dense, x32)
        if name not in seen:
            seen.add(name)
            params = sum(p.numel() for p in dense.parameters())
            out.append(
                f"| {name} | dense | — | {params:,} | 1.00 | 1.00 | 1.00 | 1.00 |" + " — |" * 7
            )
        (ours, seconds) = made[0]
        reduction = base / count_flops(ours, x1).dense
        b1, b32, peer_b32 = (statistics.median(column) for column in zip(*timed, strict=True))
        low, high = min(t[1] for t in timed), max(t[1] for t in timed)
        peer_cells = "— | — | — | not installed"
        if with_peer:
            peer, peer_seconds = made[1]
            runs = tuple(peer(x32).shape) == (32, 10)
            peer_cells = (
                f"{peer_seconds * 1e3:.1f} | {base / count_flops(peer, x1).dense:.2f} | "
                f"{peer_b32:.2f} | {'yes' if runs else 'NO'}"
            )
        out.append(
            f"| {name} | {sparsity:.0%} | {round_to} | "
            f"{sum(p.numel() for p in ours.parameters()):,} | {reduction:.2f} | "
            f"{base_traffic / traffic(ours, x32):.2f} | {b1:.2f} | {b32:.2f} | "
            f"{low:.2f}-{high:.2f} | {b32 / reduction:.2f} | {seconds * 1e3:.1f} | {peer_cells} |"
        )
    return out


def accuracy_table(seed: int, epochs: int) -> list[str]:
    data = load_digits_splits(seed=seed)
    dense = trained_on_digits(LeNet5, data, seed)
    x = data.val[0][0]
    out = [
        "",
        "## Accuracy at equal FLOPs: LeNet-5 on digits, structured",
        "",
        f"Dense test accuracy {sp.evaluate(dense, data.test):.3f}. The same channel sparsity in "
        "every layer gives every criterion the same architecture, so FLOPs are equal; scores on "
        f"the validation split; then {epochs} epochs of fine-tuning. Cells: one-shot / "
        "fine-tuned.",
        "",
        "| criterion | " + " | ".join(f"{s:.0%} channels" for s in (0.3, 0.5, 0.7)) + " |",
        "|---|---|---|---|",
    ]
    flops_row = []
    for criterion in ("taylor_fm", "taylor", "obd", "activation", "magnitude", "random"):
        cells = []
        for sparsity in (0.3, 0.5, 0.7):
            model = copy.deepcopy(dense)
            sp.prune(
                model,
                sparsity,
                criterion=criterion,
                data=data.val,
                structured=True,
                example_inputs=x,
                scope="layer",
                ignore=[model.fc3],
            )
            one_shot = sp.evaluate(model, data.test)
            sp.finetune(model, data.train, epochs=epochs, show_progress=False)
            cells.append(f"{one_shot:.3f} / {sp.evaluate(model, data.test):.3f}")
            if criterion == "random":
                flops_row.append(
                    f"{count_flops(dense, x).dense / count_flops(model, x).dense:.2f}x"
                )
        out.append(f"| {criterion} | " + " | ".join(cells) + " |")
    out.append("| FLOP reduction | " + " | ".join(flops_row) + " |")
    return out


def main() -> None:
    spin_threads()
    args = parser(
        __doc__, "benchmarks/results/structured.md", "fewer repeats and epochs"
    ).parse_args()
    try:  # the installed version: torch_pruning.__version__ lags its releases
        with_peer, peer = True, f"torch-pruning {metadata.version('torch-pruning')}"
    except metadata.PackageNotFoundError:
        with_peer, peer = False, "torch-pruning not installed"
    rounds = 3 if args.quick else 5
    started = time.perf_counter()
    lines = header("Structured pruning benchmark", "structured.py", args, f"; peer: {peer}")
    lines += speed_table(rounds, 1 if args.quick else 3, with_peer, 5 if args.quick else 11)
    lines += accuracy_table(args.seed, 2 if args.quick else 10)
    finish(lines, args.out, started)


if __name__ == "__main__":
    main()
