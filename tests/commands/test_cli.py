"""The command line: the demo end to end, and bad input."""

from __future__ import annotations

import re
import subprocess
import sys

from sensiprune.commands.cli import main


def test_quick_demo_writes_a_report_and_a_plot(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path / "demo")]) == 0
    report = (tmp_path / "demo" / "report.md").read_text()
    assert "| magnitude |" in report and "| obs |" in report
    assert "| LeNet-5 | 19,754 → 5,226 |" in report  # half the channels removed for real
    # 40x or, within 1%, a little past it (the units no layer reads go too)
    assert re.search(
        r"LeNet-300-100, `sp.compress\(target=\{'params': 0.025\}\)`\*\*: 40\.[0-4]x fewer", report
    )
    assert "| fc1.weight |" in report  # the thresholds compress chose per layer
    assert "LeNet-5, `sp.compress(target={'speedup': 1.5})`**:" in report
    assert "x faster measured at batch 1024" in report and "| family of channels |" in report
    assert (tmp_path / "demo" / "accuracy_vs_sparsity.png").read_bytes()[:4] == b"\x89PNG"
    assert "report:" in capsys.readouterr().out
    # the dense models are cached and reused
    assert main(["demo", "--quick", "--out", str(tmp_path / "demo")]) == 0


def test_out_that_is_a_file_exits_2_with_one_line(tmp_path):
    target = tmp_path / "taken"
    target.write_text("keep me")
    run = subprocess.run(
        [sys.executable, "-m", "sensiprune", "demo", "--quick", "--out", str(target)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2
    assert run.stderr.strip().count("\n") == 0
    assert "not a directory" in run.stderr and "Traceback" not in run.stderr
    assert target.read_text() == "keep me"


def test_criteria_lists_every_criterion(capsys):
    assert main(["criteria"]) == 0
    out = capsys.readouterr().out
    for name in ("magnitude", "random", "taylor", "obd", "obs", "snip", "activation"):
        assert name in out
    lines = {line.split()[0]: line for line in out.splitlines() if line}
    assert "compensates" in lines["obs"] and "data" in lines["obs"]
    assert "scores groups" in lines["group_loss"] and "channels only" in lines["group_loss"]
    assert "measures loss" in lines["perturbation"] and "measures loss" in lines["group_loss"]
    assert lines["magnitude"].split()[1] == "-"  # needs nothing


def test_report_on_a_missing_or_foreign_directory_is_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    for content in ("{}", "[]", '{"dense": 1, "pruned": {}, "recipe": {}}'):
        (tmp_path / "results.json").write_text(content)
        assert main(["report", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert err.strip().count("\n") == 0 and "results.json" in err and "Traceback" not in err
