"""torch.distributed with gloo and two CPU processes: the same scores, masks and weights."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

import sensiprune as sp
from sensiprune.runs.runner import run_recipe
from sensiprune.zoo import LeNet300100
from tests.distributed_support import batches, dense_model, score_prune_and_tune
from tests.recipe_support import ROOT, write_recipe

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="this torch build has no torch.distributed"
)


def test_two_ranks_score_prune_and_tune_like_one_process(tmp_path):
    model, data = dense_model(tmp_path), batches()
    mp.spawn(score_prune_and_tune, args=(2, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the workers: the same kernels, the same rounding
    try:
        singles = {name: sp.score(model, name, data) for name in ("taylor", "obd")}
        single_masks = sp.get_masks(_pruned(model, data))
    finally:
        torch.set_num_threads(threads)
    for name, single in singles.items():
        for got in ranks:
            for key, value in single.items():  # relative to the layer's scale of scores
                scale = 1e-6 * value.abs().max().item()
                torch.testing.assert_close(got[name][key], value, rtol=1e-6, atol=scale)
    for key, mask in single_masks.items():
        assert torch.equal(ranks[0]["masks"][key], mask)
        assert torch.equal(ranks[1]["masks"][key], mask)
    for key, value in ranks[0]["tuned"].items():
        assert torch.equal(value, ranks[1]["tuned"][key])  # DDP: one model on both ranks


def _pruned(model, data):
    sp.prune(model, 0.8, criterion="taylor", data=data)
    return model


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(recipe, *extra: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
        f"--master_port={_free_port()}", "-m", "sensiprune", "prune", "-q", str(recipe), *extra,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)


def test_torchrun_prunes_to_the_single_process_model(tmp_path):
    dense_model(tmp_path)  # trained weights, so the runs only score and prune
    sections = {
        "model": {"factory": "sensiprune.zoo:LeNet300100", "weights": str(tmp_path / "dense.pt")},
        "schedule": {"kind": "one_shot"},
        "finetune": {"epochs": 0},
    }
    together = write_recipe(tmp_path, "two.yaml", output=str(tmp_path / "two"), **sections)
    run = _torchrun(together)
    assert run.returncode == 0, run.stderr[-2000:]
    alone = write_recipe(tmp_path, "one.yaml", output=str(tmp_path / "one"), **sections)
    run_recipe(alone, show_progress=False)
    two = sp.load(tmp_path / "two" / "model", LeNet300100)
    one = sp.load(tmp_path / "one" / "model", LeNet300100)
    assert sp.get_masks(two).keys() == sp.get_masks(one).keys()
    for key, mask in sp.get_masks(one).items():
        assert torch.equal(sp.get_masks(two)[key], mask)
    for key, value in one.state_dict().items():
        assert torch.equal(two.state_dict()[key], value)
    assert not (tmp_path / "two" / "checkpoint.1").exists()  # one writer


def test_a_failing_rank_stops_the_run_the_checkpoint_survives_and_a_rerun_resumes(tmp_path):
    recipe = write_recipe(tmp_path, loss="tests.distributed_support:loss_failing_on_rank_1",
                          schedule={"kind": "one_shot"}, finetune={"epochs": 2})  # fmt: skip
    run = _torchrun(recipe)
    assert run.returncode != 0
    assert "rank 1 lost its data" in run.stderr
    progress = json.loads((tmp_path / "run" / "checkpoint" / "progress.json").read_text())
    assert 3 <= progress["completed"] < 5  # pretraining and the prune, not both epochs
    weights = load_file(tmp_path / "run" / "checkpoint" / "model" / "weights.safetensors")
    assert weights  # readable: written atomically before the crash

    rerun = _torchrun(recipe)  # the same command resumes, distributed, and finishes
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    stages = [json.loads(line)["stage"] for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert stages == [
        "pretraining epoch 1", "pretraining epoch 2", "step 1 prune", "step 1 epoch 1",
        "step 1 epoch 2",
    ]  # fmt: skip
    assert (tmp_path / "run" / "results.json").exists()


def test_a_shard_knows_its_length_without_reading_the_batches():
    from sensiprune.distributed import Shard

    for rank in (0, 1):
        shard = Shard(list(range(5)))
        shard.rank, shard.size = rank, 2  # as rank `rank` of two
        assert len(shard) == len(list(shard)) == (3 if rank == 0 else 2)
    with pytest.raises(TypeError):
        len(Shard(iter(range(5))))
