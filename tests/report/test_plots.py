"""Every series of a plot has a colour and a marker of its own."""

from __future__ import annotations

import pytest
from matplotlib.colors import to_hex

from sensiprune.report.plots import series_style


@pytest.mark.parametrize("count", [3, 10, 11, 20, 40])
def test_every_series_has_its_own_colour(count):
    styles = [series_style(i, count) for i in range(count)]
    assert len({to_hex(s["color"]) for s in styles}) == count
    if count <= 12:
        assert len({s["marker"] for s in styles}) == count
