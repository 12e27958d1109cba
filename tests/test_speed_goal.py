"""The calibration of a speed goal: how the next fraction to try is found, and the filling
of a calibrated budget up to whole vectors."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from sensiprune import speed_goal
from sensiprune.speed_goal import SpeedCandidate


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


def _three_convs() -> tuple[nn.Module, tuple[torch.Tensor]]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 24, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(24 * 64, 3),
    )  # fmt: skip
    return model, (torch.randn(4, 3, 8, 8),)


# calibrated at 2.02x: kept where as fast (to 1%) and within 2% of the goal
@pytest.mark.parametrize(("measured", "kept"), [(2.03, True), (2.0, True), (1.98, False)])
def test_a_budget_is_filled_up_to_whole_vectors_only_where_it_still_measures_the_goal(
    monkeypatch, measured, kept
):
    model, inputs = _three_convs()
    seen = []

    def timed(dense, pruned, _):
        seen.append([m.out_channels for m in pruned.modules() if isinstance(m, nn.Conv2d)])
        return measured

    monkeypatch.setattr(speed_goal, "vector_width", lambda _: 8)
    monkeypatch.setattr(speed_goal, "measured_speedup", timed)
    calibrated = SpeedCandidate("FLOPs", {"target_flops": 0.5}, {"0": 0.7, "2": 0.6}, 2.02, True)
    result = speed_goal.filled(model, calibrated, 2.0, inputs)
    assert seen == [[8, 16]]  # 4.8 and 9.6 channels asked: rounded up, never down
    assert result == (replace(calibrated, speedup=measured, round_to=8) if kept else calibrated)
    assert speed_goal.filled(model, result, 2.0, inputs) is result  # whole vectors already
