"""The one progress helper: a bar on a terminal, a plain line now and then elsewhere (a CI
log, ``nohup``, a notebook's captured stderr), so long work never looks stuck."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")
FIRST_LINE_S, EVERY_S = 10.0, 30.0  # quiet for short loops, then twice a minute


def progress(
    items: Iterable[T], desc: str, enabled: bool = True, total: int | None = None
) -> Iterator[T]:
    """Wrap ``items`` in a tqdm bar when asked and stderr is a terminal; without a terminal,
    one line with what is done and what is left, after 10 s and then every 30 s."""
    if not enabled:
        yield from items
    elif sys.stderr.isatty():
        yield from tqdm(items, desc=desc, total=total, leave=False, dynamic_ncols=True)
    else:
        yield from _logged(items, desc, total if total is not None else _length(items))


def _logged(items: Iterable[T], desc: str, total: int | None) -> Iterator[T]:
    start = time.monotonic()
    due, done, told = start + FIRST_LINE_S, 0, False
    for item in items:
        yield item
        done += 1
        now = time.monotonic()
        if now >= due:
            print(f"{desc}: {_status(done, total, now - start)}", file=sys.stderr, flush=True)
            due, told = now + EVERY_S, True
    if told:
        elapsed = time.monotonic() - start
        print(f"{desc}: done, {done} in {elapsed:.0f} s", file=sys.stderr, flush=True)


def _status(done: int, total: int | None, elapsed: float) -> str:
    if not total:
        return f"{done} done, {elapsed:.0f} s"
    left = elapsed / done * (total - done)
    return f"{done}/{total} ({done / total:.0%}), {elapsed:.0f} s, about {left:.0f} s left"


def _length(items: Iterable[T]) -> int | None:
    try:
        return len(items)  # type: ignore[arg-type]
    except TypeError:
        return None
