"""Sparsity schedules are pure functions of the step."""

from __future__ import annotations

import pytest

from sensiprune.errors import SensipruneError
from sensiprune.selection.schedule import fraction_done, geometric_sparsity, sparsity_at


def test_cubic_schedule_of_zhu_and_gupta():
    assert [round(fraction_done(t, 4), 4) for t in range(5)] == [0, 0.5781, 0.875, 0.9844, 1.0]
    assert sparsity_at(0.8, 2, 4) == pytest.approx(0.8 * 0.875)
    assert sparsity_at({"a": 0.5}, 4, 4, "linear") == {"a": 0.5}


def test_geometric_steps_remove_the_same_fraction_of_what_is_left():
    densities = [1 - geometric_sparsity(0.99, t, 2) for t in (1, 2)]
    assert densities == pytest.approx([0.1, 0.01])


@pytest.mark.parametrize(("steps", "kind"), [(0, "cubic"), (2, "exponential"), (1.5, "linear")])
def test_bad_schedules_are_refused(steps, kind):
    with pytest.raises(SensipruneError):
        fraction_done(1, steps, kind)
