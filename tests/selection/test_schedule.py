"""Sparsity schedules are pure functions of the step."""

from __future__ import annotations

import pytest

from sensiprune.errors import SensipruneError
from sensiprune.selection.schedule import (
    channel_shares,
    fraction_done,
    geometric_sparsity,
    share_of_remaining,
    sparsity_at,
    structured_step,
)


def test_cubic_schedule_of_zhu_and_gupta():
    assert [round(fraction_done(t, 4), 4) for t in range(5)] == [0, 0.5781, 0.875, 0.9844, 1.0]
    assert sparsity_at(0.8, 2, 4) == pytest.approx(0.8 * 0.875)
    assert sparsity_at({"a": 0.5}, 4, 4, "linear") == {"a": 0.5}


def test_geometric_steps_remove_the_same_fraction_of_what_is_left():
    densities = [1 - geometric_sparsity(0.99, t, 2) for t in (1, 2)]
    assert densities == pytest.approx([0.1, 0.01])


def test_a_geometric_path_cuts_the_same_share_of_what_is_left_every_step():
    assert sparsity_at({"a": 0.99}, 1, 2, "geometric") == pytest.approx({"a": 0.9})
    shares = [share_of_remaining({"a": 0.936}, t, 3, "geometric")["a"] for t in (1, 2, 3)]
    assert shares == pytest.approx([0.6] * 3)  # 0.4 ** 3 = 0.064 of the channels kept
    # half of step 2 of 2, as compress tries it where step 2 drops past its bound
    assert 1 - sparsity_at(0.99, 3, 4, "geometric") == pytest.approx(0.01**0.75)


@pytest.mark.parametrize(("steps", "kind"), [(0, "cubic"), (2, "exponential"), (1.5, "linear")])
def test_bad_schedules_are_refused(steps, kind):
    with pytest.raises(SensipruneError):
        fraction_done(1, steps, kind)
    with pytest.raises(SensipruneError):
        sparsity_at(0.5, 1, steps, kind)


def test_shares_of_what_is_left_add_up_to_the_target():
    left = {"a": 1.0, "b": 1.0}
    for step in range(1, 5):
        share = share_of_remaining({"a": 0.8, "b": 0.5}, step, 4)
        left = {k: v * (1.0 - share[k]) for k, v in left.items()}
    assert left == pytest.approx({"a": 0.2, "b": 0.5})
    assert share_of_remaining(0.6, 1, 1) == pytest.approx(0.6)


@pytest.mark.parametrize("kind", ["cubic", "geometric"])
def test_channel_steps_end_on_the_count_one_step_keeps_and_never_stall(kind):
    """32 channels to 3 in multiples of 8 keeps 8 in one step; rounded up at every step, a
    four-step path would stall at 24. 64 to 42% in multiples of 16 keeps 32."""
    sizes, budget = {"a": 32, "b": 64}, {"a": 0.90625, "b": 0.58}
    left, path = dict(sizes), []
    for step in range(1, 5):
        shares = channel_shares(sizes, budget, step, 4, kind, round_to=8 * 2)
        left = {k: v - round(shares[k] * v) for k, v in left.items()}
        path.append(left)
    assert path[-1] == {"a": 16, "b": 32}  # rounded up to 16 at the last step only
    for name in sizes:
        counts = [sizes[name]] + [p[name] for p in path]
        assert counts == sorted(counts, reverse=True)  # every step keeps no more than the last
        assert min(counts) == path[-1][name] and counts[1] < counts[0]  # never under the end


def test_a_structured_step_rounds_once_and_skips_families_already_at_their_count():
    """Without widths (a global ranking), the share of what is left, rounded at the last step
    only; with widths, whole counts cut with round_to 1, and a family whose count does not
    move this step is left out (pruned by 0 it would still be scored and cut again)."""
    assert structured_step(0.5, 1, 2, "linear", None, 8) == (pytest.approx(0.25), 1)
    assert structured_step(0.5, 2, 2, "linear", None, 8) == (pytest.approx(1 / 3), 8)
    # 8 channels to 4 in multiples of 4: the cubic path's step 3 of 3 keeps 4, as step 2 did
    shares, multiple = structured_step({"a": 0.5, "b": 0.5}, 3, 3, "cubic", {"a": 8, "b": 64}, 4)
    assert multiple == 1 and set(shares) == {"b"}
    assert structured_step(0.5, 1, 1, "cubic", {"a": 8}, 4) == ({"a": 0.5}, 1)
