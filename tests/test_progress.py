"""Progress shows without a terminal too: a line with what is done and what is left."""

from __future__ import annotations

from sensiprune import progress as progress_module
from sensiprune.progress import progress


def test_without_a_terminal_long_loops_print_what_is_done_and_left(monkeypatch, capsys):
    clock = iter(range(0, 1000, 7))  # every step takes 7 s
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: next(clock))
    assert list(progress(range(10), "scoring")) == list(range(10))
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "scoring: 2/10 (20%), 14 s, about 56 s left"
    assert lines[-1].startswith("scoring: done, 10 in ")
    assert lines[1] == "scoring: 7/10 (70%), 49 s, about 21 s left" and len(lines) == 3


def test_short_loops_and_disabled_progress_stay_quiet(capsys):
    assert list(progress(range(3), "quick")) == [0, 1, 2]
    assert list(progress(iter(range(3)), "off", enabled=False)) == [0, 1, 2]
    assert capsys.readouterr().err == ""
