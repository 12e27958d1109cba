"""CPU threads kept spinning between operators while timing.

PyTorch's CPU build runs each operator on a team of OpenMP threads (GNU libgomp). Between
two operators the team spins for a while and then sleeps, and waking it costs tens of
microseconds, paid once per operator. Whether a forward pass finds the team awake changes
from one process, and one moment, to the next, and a model of many small operators pays it
most: one pruned MobileNetV2-style model measured 1.14-1.66x against its dense model over six
fresh processes with libgomp's defaults, and 1.47-1.70x with ``OMP_WAIT_POLICY=ACTIVE``
(threads spin, never sleep), where both also ran 20-30% faster. libgomp reads the policy
once, when it is loaded, so it has to be in the environment before Python starts: the
commands that time re-run themselves with it, and a library caller sets it.
"""

from __future__ import annotations

import functools
import logging
import os
import sys

import torch

log = logging.getLogger(__name__)
WAIT_POLICY = "OMP_WAIT_POLICY"


def respawn_spinning(argv: list[str]) -> None:
    """Replace this process with ``python argv...`` run with ``OMP_WAIT_POLICY=ACTIVE``,
    unless the policy is already set (any value: the caller's choice stands) or one thread
    runs (nothing to wake). Returns only where nothing was replaced."""
    if WAIT_POLICY in os.environ or torch.get_num_threads() == 1:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *argv], {**os.environ, WAIT_POLICY: "ACTIVE"})


@functools.cache
def warn_if_threads_sleep() -> None:
    """Once per process: say that CPU timings swing when the thread team may sleep."""
    if WAIT_POLICY not in os.environ and torch.get_num_threads() > 1:
        log.warning(
            "%s is not set: CPU timings of models of many small operators can swing by "
            "30%% between runs (threads sleep between operators); set %s=ACTIVE before "
            "starting Python for steady timing",
            WAIT_POLICY, WAIT_POLICY,
        )  # fmt: skip
