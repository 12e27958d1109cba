"""torch.distributed, when a run is launched under it (torchrun); a no-op otherwise.

Statistics are summed over the ranks' shards of the data, so every rank holds the scores a
single process would compute on all the data (up to float summation order), and the decisions
taken from them (masks, removed channels) are broadcast from rank 0, so the ranks can never
disagree. Only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from sensiprune.errors import SensipruneError


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def init_from_environment() -> bool:
    """Join the process group torchrun describes in the environment (gloo on CPU, nccl on
    GPU); returns whether this process is one of several."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or active():
        return active()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    try:
        dist.init_process_group(backend)
    except (RuntimeError, ValueError) as exc:
        raise SensipruneError(f"cannot join the torch.distributed process group: {exc}") from exc
    return True


def shutdown() -> None:
    """Leave the process group, so no communication thread outlives the interpreter (an
    exit with one still running aborts the process)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def sum_(tensors: Sequence[torch.Tensor]) -> None:
    """Sum each tensor over the ranks, in place (one flat all-reduce per dtype)."""
    if not active() or not tensors:
        return
    for dtype in {t.dtype for t in tensors}:
        group = [t for t in tensors if t.dtype == dtype]
        flat = torch.cat([t.reshape(-1) for t in group])
        dist.all_reduce(flat)
        offset = 0
        for t in group:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()


def sum_count(count: int) -> int:
    if not active():
        return count
    total = torch.tensor([count], dtype=torch.long)
    dist.all_reduce(total)
    return int(total.item())


def broadcast_(tensors: Iterable[torch.Tensor]) -> None:
    """Give every rank rank 0's values, in place."""
    if active():
        for tensor in tensors:
            dist.broadcast(tensor, src=0)


def broadcast_module(model: nn.Module) -> None:
    """Parameters, buffers and masks of rank 0 on every rank (shapes must already agree)."""
    if active():
        with torch.no_grad():
            broadcast_([*model.parameters(), *model.buffers()])


def gather(value: Any) -> list[Any]:
    """Every rank's ``value``, in rank order, on every rank."""
    if not active():
        return [value]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, value)
    return out


def mine(items: Sequence[Any]) -> list[Any]:
    """This rank's share of independent work items (round robin)."""
    return list(items[rank() :: world_size()])


def merged(results: dict) -> dict:
    """Every rank's ``results`` dict combined, on every rank."""
    combined: dict = {}
    for part in gather(results):
        combined.update(part)
    return combined


def same_rng() -> None:
    """Rank 0's torch generator state on every rank: a shuffled loader then deals the same
    order everywhere, so the ranks' shards stay disjoint."""
    if active():
        state = torch.get_rng_state()
        dist.broadcast(state, src=0)
        torch.set_rng_state(state)


def barrier() -> None:
    if active():
        dist.barrier()


@contextlib.contextmanager
def data_parallel(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` wrapped in DistributedDataParallel for a training loop (uneven shards
    allowed), or as it is in a single process. Surgery must happen before, never inside."""
    if not active():
        yield model
        return
    wrapped = DistributedDataParallel(model)
    with wrapped.join():
        yield wrapped


class Shard:
    """Every ``world_size``-th batch, starting at this rank's: each rank reads its own part,
    and together they read each batch exactly once."""

    def __init__(self, batches: Iterable[Any]) -> None:
        self.batches = batches
        self.rank, self.size = rank(), world_size()

    def __iter__(self) -> Iterator[Any]:
        for index, batch in enumerate(self.batches):
            if index % self.size == self.rank:
                yield batch

    def __len__(self) -> int:  # only when the batches have a length (else TypeError, as len does)
        return len(range(self.rank, len(self.batches), self.size))


def shard(batches: Iterable[Any]) -> Iterable[Any]:
    return Shard(batches) if active() else batches
