"""The calibration of a speed goal: how the next fraction to try is found."""

from __future__ import annotations

import pytest

from sensiprune import speed_goal


@pytest.mark.parametrize(
    ("tried", "expected"),
    [
        ([(0.5, 1.0)], 0.25),  # one try: scaled by the miss
        ([(0.5, 1.0), (0.25, 4.0)], 2**-1.5),  # bracketing: a power law through both
        ([(0.5, 1.0), (0.4, 1.25)], 0.25),  # both slow: the line through the two, extended
        ([(0.5, 1.0), (0.4, 1.0)], 0.2),  # no slope to follow: scaled by the last miss
    ],
)
def test_the_next_fraction_follows_a_power_law_through_the_nearest_tries(tried, expected):
    assert speed_goal.next_keep(tried, 2.0) == pytest.approx(expected)
