"""The one progress-bar helper: quiet unless attached to a terminal."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def progress(
    items: Iterable[T], desc: str, enabled: bool = True, total: int | None = None
) -> Iterator[T]:
    """Wrap ``items`` in a tqdm bar when asked and stderr is a terminal."""
    if not enabled or not sys.stderr.isatty():
        yield from items
        return
    yield from tqdm(items, desc=desc, total=total, leave=False, dynamic_ncols=True)
