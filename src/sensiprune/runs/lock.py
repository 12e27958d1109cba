"""One run at a time per output directory: two runs writing one checkpoint and one metrics
log would interleave their stages. The lock is advisory (``flock``), so it goes with the
process that holds it, however that process ends."""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO

from sensiprune.errors import SensipruneError

try:
    import fcntl
except ImportError:  # Windows: no flock, runs are not locked
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".sensiprune.runs.lock"


class DirectoryLock:
    """Held from :meth:`acquire` to :meth:`release`; the file names the holder's pid."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._handle: IO[str] | None = None

    def acquire(self) -> None:
        if self._handle is not None or fcntl is None:
            return
        handle = (self.directory / LOCK_FILE).open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise SensipruneError(
                f"output {self.directory} is in use by another sensiprune run (pid {holder}): "
                "wait for it to finish, or use another output directory"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None
