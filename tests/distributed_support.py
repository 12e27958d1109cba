"""Worker processes for the distributed tests (spawned; they must be importable)."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

import sensiprune as sp
from sensiprune import distributed
from sensiprune.zoo import LeNet300100, load_digits_splits


def dense_model(directory: str | Path) -> LeNet300100:
    """Trained once by the parent and read by every process: the same starting weights."""
    path = Path(directory) / "dense.pt"
    model = LeNet300100()
    if not path.exists():
        torch.manual_seed(0)
        sp.finetune(model, load_digits_splits().train, epochs=2, show_progress=False)
        torch.save(model.state_dict(), path)
    model.load_state_dict(torch.load(path, weights_only=True))
    return model


def batches() -> list:
    return load_digits_splits(batch_size=32).train[:9]  # an odd count: uneven shards


def score_prune_and_tune(rank: int, world: int, directory: str) -> None:
    """Scores, masks and a short DDP fine-tune on this rank's shard; saved for the parent."""
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{directory}/rendezvous", rank=rank, world_size=world
    )
    try:
        model, data = dense_model(directory), distributed.shard(batches())
        out: dict[str, Any] = {
            "taylor": sp.score(model, "taylor", data),
            "obd": sp.score(model, "obd", data),
        }
        pruned = copy.deepcopy(model)
        sp.prune(pruned, 0.8, criterion="taylor", data=data)
        out["masks"] = sp.get_masks(pruned)
        optimizer = torch.optim.SGD(pruned.parameters(), lr=0.1, momentum=0.9)
        with distributed.data_parallel(pruned) as trained:
            sp.finetune(trained, data, epochs=2, optimizer=optimizer, show_progress=False)
        out["tuned"] = pruned.state_dict()
        torch.save(out, Path(directory) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def loss_failing_on_rank_1(model: torch.nn.Module, batch: Any) -> torch.Tensor:
    """Cross-entropy, except that rank 1 crashes on its 31st training batch: in the first
    fine-tuning epoch after the prune, with pretraining and the prune checkpointed."""
    if os.environ.get("RANK") == "1" and model.training:
        _Calls.count += 1
        if _Calls.count > 30:
            raise RuntimeError("rank 1 lost its data")
    return F.cross_entropy(model(batch[0]), batch[1])


class _Calls:
    count = 0
