"""Measured latency as a function of each family's channel sparsity: the lookup table that a
speed goal is allocated against (NetAdapt, HALP).

FLOPs predict speed poorly: on a 2-core CPU, ResNet-style models at 70% of channels run only
0.33-0.80x as much faster as their FLOPs fall (benchmarks/results/structured.md), and a
depthwise layer costs far more time per FLOP than a dense convolution. So each family of
coupled layers is really cut, at a few sparsities, on a copy of the model, and the whole copy
is timed against the dense model, in alternation, on the user's device, dtype and batch.
"""

from __future__ import annotations

import bisect
import contextlib
import copy
import hashlib
import json
import os
import platform
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from sensiprune.analysis.sensitivity import SensitivityTable
from sensiprune.errors import SensipruneError
from sensiprune.io.atomic import atomic_write_bytes
from sensiprune.measure import latency, speedup
from sensiprune.progress import progress
from sensiprune.pruning import prune

FRACTIONS = (0.25, 0.5, 0.75, 0.9)


@dataclass(frozen=True)
class LatencyModel:
    """Seconds of one forward pass as a function of the sparsity of each family: the dense
    time less what each family saves at its sparsity, interpolated between measured points.
    Savings are added across families; where cuts of neighbouring families interact, the
    caller measures the pruned model and corrects its target (``sp.compress`` does)."""

    total: float  # seconds of the dense model
    fractions: tuple[float, ...]
    saved: dict[str, tuple[float, ...]]  # family -> seconds saved at each fraction
    device: str

    def kept(self, levels: Mapping[str, float]) -> float:
        """Predicted seconds with each named family at its sparsity (the rest dense)."""
        return self.total - sum(self.saving(name, level) for name, level in levels.items())

    def saving(self, name: str, level: float) -> float:
        """Seconds saved by ``name`` at ``level``: linear between the measured points, and
        along the last segment past the last one."""
        if name not in self.saved or level <= 0:
            return 0.0
        xs, ys = (0.0, *self.fractions), (0.0, *self.saved[name])
        right = min(bisect.bisect_left(xs, level), len(xs) - 1)
        (x0, y0), (x1, y1) = (xs[right - 1], ys[right - 1]), (xs[right], ys[right])
        return y0 + (y1 - y0) * (level - x0) / (x1 - x0)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> LatencyModel:
        state = json.loads(text)
        return cls(
            float(state["total"]),
            tuple(state["fractions"]),
            {name: tuple(values) for name, values in state["saved"].items()},
            str(state["device"]),
        )


def measure_latency(
    model: nn.Module,
    table: SensitivityTable,
    example_inputs: Sequence[torch.Tensor],
    *,
    fractions: Sequence[float] = FRACTIONS,
    round_to: int | str = 1,
    cache_dir: str | os.PathLike | None = None,
    show_progress: bool = False,
) -> LatencyModel:
    """The latency table of ``model`` (left unchanged) for the families of a structured
    ``table``, timed on ``example_inputs`` (their batch size is the one that counts). Each
    family is cut to each of ``fractions`` with ``round_to`` as the final prune will use it.
    With ``cache_dir``, a table measured before for the same architecture, inputs, device,
    dtype, thread count and settings is read back instead of timed again."""
    if table.flop_model is None:
        raise SensipruneError(
            "latency is measured per family of channels: pass a table measured with "
            "sensitivity(..., structured=True)"
        )
    inputs = tuple(example_inputs)
    points = tuple(sorted(float(f) for f in fractions))
    if not points or not all(0.0 < f < 1.0 for f in points):
        raise SensipruneError(f"latency fractions must lie in (0, 1), got {list(fractions)}")
    device = device_description(model)
    key = _cache_key(model, inputs, device, points, round_to, table.layers)
    cached = _cache_file(cache_dir, key)
    if cached is not None and cached.is_file():
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            return LatencyModel.from_json(cached.read_text())  # else damaged: measure again
    total = latency(model, *inputs, warmup=3, repeats=10)
    saved = {}
    for name in progress(table.layers, "latency, family by family", show_progress):
        saved[name] = monotone([_saving(model, name, f, inputs, round_to, total) for f in points])
    measured = LatencyModel(total, points, saved, device)
    if cached is not None:
        atomic_write_bytes(cached, measured.to_json().encode())
    return measured


def monotone(values: Sequence[float]) -> tuple[float, ...]:
    """The closest non-decreasing, non-negative sequence (pooling adjacent violators): cutting
    more never takes longer, and each measurement is noisy both ways. A running maximum would
    keep every upward error: over a dozen families, savings that are not there."""
    blocks: list[list[float]] = []  # [sum, count] of pooled runs
    for value in values:
        blocks.append([value, 1])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            total, count = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
    return tuple(max(0.0, t / n) for t, n in blocks for _ in range(int(n)))


def _saving(
    model: nn.Module,
    name: str,
    fraction: float,
    inputs: tuple[torch.Tensor, ...],
    round_to: int | str,
    total: float,
) -> float:
    cut = copy.deepcopy(model)
    prune(cut, {name: fraction}, criterion="magnitude", structured=True,
          example_inputs=inputs, round_to=round_to)  # fmt: skip
    ratio = speedup(model, cut, *inputs, warmup=1, rounds=5, repeats=3)
    return total * (1.0 - 1.0 / ratio)  # noise both ways: monotone() pools, then clamps


def _cache_file(cache_dir: str | os.PathLike | None, key: str) -> Path | None:
    if cache_dir is None:
        return None
    directory = Path(cache_dir).expanduser()
    if directory.exists() and not directory.is_dir():
        raise SensipruneError(
            f"latency_cache {directory} exists and is not a directory: pass a directory"
        )
    return directory / f"{key}.json"


def device_description(model: nn.Module) -> str:
    """What the timings hold for: the device (a GPU's name, or the CPU's vector unit and
    core count), the dtype, and the threads torch runs on."""
    param = next(model.parameters(), None)
    dtype = str(param.dtype) if param is not None else "float32"
    if param is not None and param.device.type == "cuda":
        where = torch.cuda.get_device_name(param.device)
    else:
        where = (
            f"cpu {platform.machine()} {torch.backends.cpu.get_cpu_capability()}, "
            f"{os.cpu_count()} cores"
        )
    return f"{where}, {dtype}, {torch.get_num_threads()} threads"


def _cache_key(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    device: str,
    fractions: tuple[float, ...],
    round_to: int | str,
    families: tuple[str, ...],
) -> str:
    """The architecture (module tree and tensor shapes, not the weights: a dense layer's
    time does not depend on its values), the inputs' shapes, the device and the settings."""
    digest = hashlib.sha256()
    parts = [repr(model), device, repr((fractions, round_to, families)), torch.__version__]
    parts += [f"{n}{tuple(t.shape)}{t.dtype}" for n, t in model.state_dict().items()]
    parts += [f"{tuple(t.shape)}{t.dtype}" for t in inputs if isinstance(t, torch.Tensor)]
    for part in parts:
        digest.update(part.encode())
    return digest.hexdigest()[:32]
