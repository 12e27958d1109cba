"""The CPU's thread team kept spinning while timing: when a process re-runs itself so, and
the warning where it does not."""

from __future__ import annotations

import logging
import sys

import pytest

from sensiprune import threads
from sensiprune.commands import cli


@pytest.fixture
def exec_calls(monkeypatch):
    """os.execve recorded instead of run."""
    calls = []
    monkeypatch.setattr(threads.os, "execve", lambda *a: calls.append(a))
    monkeypatch.setattr(threads.torch, "get_num_threads", lambda: 2)
    return calls


def test_a_process_with_no_wait_policy_reruns_itself_with_spinning_threads(monkeypatch, exec_calls):
    monkeypatch.delenv(threads.WAIT_POLICY, raising=False)
    threads.respawn_spinning(["-m", "sensiprune", "compress", "r.yaml"])
    [(program, argv, env)] = exec_calls
    assert program == sys.executable
    assert argv == [sys.executable, "-m", "sensiprune", "compress", "r.yaml"]
    assert env[threads.WAIT_POLICY] == "ACTIVE"


def test_a_policy_set_by_the_caller_or_one_thread_is_left_alone(monkeypatch, exec_calls):
    monkeypatch.setenv(threads.WAIT_POLICY, "PASSIVE")
    threads.respawn_spinning(["x.py"])
    monkeypatch.delenv(threads.WAIT_POLICY)
    monkeypatch.setattr(threads.torch, "get_num_threads", lambda: 1)
    threads.respawn_spinning(["x.py"])
    assert exec_calls == []


@pytest.mark.parametrize(
    ("argv", "respawned"),
    [
        (["sensiprune", "compress", "r.yaml"], True),  # times models: re-run
        (["sensiprune", "criteria"], False),  # times nothing
    ],
)
def test_the_command_line_reruns_only_the_commands_that_time(monkeypatch, argv, respawned):
    calls = []

    class Respawned(Exception):
        pass

    def respawn(args):
        calls.append(args)
        raise Respawned

    monkeypatch.setattr(cli, "respawn_spinning", respawn)
    monkeypatch.setattr(sys, "argv", argv)
    if respawned:
        with pytest.raises(Respawned):
            cli.main()
        assert calls == [["-m", "sensiprune", *argv[1:]]]
    else:
        assert cli.main() == 0
        assert cli.main(["compress", "missing.yaml"]) == 2  # a caller's argv: never re-run
        assert calls == []


def test_timing_with_sleeping_threads_is_warned_about_once(monkeypatch, caplog):
    monkeypatch.delenv(threads.WAIT_POLICY, raising=False)
    monkeypatch.setattr(threads.torch, "get_num_threads", lambda: 2)
    threads.warn_if_threads_sleep.cache_clear()
    caplog.set_level(logging.WARNING, logger="sensiprune.threads")
    threads.warn_if_threads_sleep()
    threads.warn_if_threads_sleep()
    threads.warn_if_threads_sleep.cache_clear()
    assert len(caplog.records) == 1
    assert "OMP_WAIT_POLICY=ACTIVE" in caplog.records[0].getMessage()
