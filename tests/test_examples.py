"""The examples run as written (they are documentation that must not rot)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_prune_your_model_runs_end_to_end():
    run = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "prune_your_model.py")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "masked, one-shot: test accuracy" in run.stdout
    assert "reloaded: test accuracy" in run.stdout
