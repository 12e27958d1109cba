"""The calibration of a speed goal: how the next fraction to try is found, how noisy tries
are pooled, and the filling of a calibrated budget up to whole vectors."""

from __future__ import annotations

import math
import statistics
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from sensiprune import speed_goal
from sensiprune.speed_goal import SpeedCandidate


@pytest.mark.parametrize(
    ("tried", "expected"),
    [
        ([(0.5, 1.0)], 0.25),  # one try: the prior slope, speed-up as 1 / kept
        ([(0.5, 1.0), (0.25, 4.0)], 2**-1.5),  # far apart: about the line through both
        ([(0.5, 1.0), (0.4, 1.25)], 0.25),  # on the prior's line: extended
        ([(0.5, 1.0), (0.4, 1.0)], 0.2**0.5 / 2),  # no slope: the prior's, through both
        # four tries on 1 / kept near the goal; a far one off that line is left out of the fit
        ([(0.9, 1.05), (0.6, 5 / 3), (0.55, 1 / 0.55), (0.45, 1 / 0.45), (0.4, 2.5)], 0.5),
    ],
)
def test_the_next_fraction_follows_a_power_law_through_the_nearest_tries(tried, expected):
    assert speed_goal.next_keep(tried, 2.0) == pytest.approx(expected, rel=0.02)


def test_two_tries_close_together_are_drawn_towards_the_prior_slope():
    """0.5 kept measured 1.0x and 0.45 measured 1.2x: the line through both (slope -1.73)
    puts the goal at 0.335 kept, the prior (speed-up as 1 / kept) through their middle at
    0.260; tries 10% apart, each a few percent off, get a slope between the two."""
    tried = [(0.5, 1.0), (0.45, 1.2)]
    through_both = 0.5 * 2.0 ** (math.log(0.9) / math.log(1.2))
    prior_only = math.exp(statistics.fmean([math.log(0.5), math.log(0.45)])) / (2 / 1.2**0.5)
    assert prior_only < speed_goal.next_keep(tried, 2.0) < through_both


def test_a_try_that_erred_onto_the_goal_is_not_taken_at_its_word(monkeypatch):
    """The speed-up is 1 / kept (the goal 2x keeps half); the first try, at 0.52, is timed
    4% fast and lands on the goal. Stopping there keeps a model 1.92x fast. The search goes
    on through three tries, the first fraction timed again, and pools each budget's timings
    with the fit through all three (1.95x for 0.52, not the 2.0x it measured first)."""
    errors = iter([1.04, 0.99, 1.01, 1.0, 0.98, 1.02])

    def timed(_dense, pruned, _inputs, timings):
        assert timings == 1  # one timing a try: the fit pools them
        return 1.0 / pruned.keep * next(errors)

    monkeypatch.setattr(speed_goal, "allocate", lambda _table, keep: {"a": keep})
    monkeypatch.setattr(speed_goal, "_cut_copy", lambda _m, b, *_: SimpleNamespace(keep=b["a"]))
    monkeypatch.setattr(speed_goal, "measured_speedup", timed)
    tries = speed_goal._search(None, None, 2.0, (), 1, 0.52, 0.05, lambda k: {"keep": k},
                               "uniform")  # fmt: skip
    assert len(tries) == speed_goal.MIN_TRIES and tries[0][0] == tries[1][0] == 0.52
    assert [round(reached, 3) for _, reached, _ in tries] == [1.95, 1.95, 1.994]
    keep, _, budget = tries[-1]
    assert budget == {"a": keep}
    assert abs(1.0 / keep - 2.0) < abs(1.0 / 0.52 - 2.0) / 2  # truly nearer the goal


def _three_convs() -> tuple[nn.Module, tuple[torch.Tensor]]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 24, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(24 * 64, 3),
    )  # fmt: skip
    return model, (torch.randn(4, 3, 8, 8),)


# calibrated at 2.02x: kept where as fast as the calibrated cut (to 1%), timed against it
@pytest.mark.parametrize(("ratio", "kept"), [(1.005, True), (0.99, True), (0.98, False)])
def test_a_budget_is_filled_up_to_whole_vectors_only_where_it_still_measures_the_goal(
    monkeypatch, ratio, kept
):
    model, inputs = _three_convs()
    seen = []

    def widths(m):
        return [c.out_channels for c in m.modules() if isinstance(c, nn.Conv2d)]

    def timed(calibrated, filled, _):
        seen.append((widths(calibrated), widths(filled)))
        return ratio

    monkeypatch.setattr(speed_goal, "vector_width", lambda _: 8)
    monkeypatch.setattr(speed_goal, "measured_speedup", timed)
    calibrated = SpeedCandidate("FLOPs", {"target_flops": 0.5}, {"0": 0.7, "2": 0.6}, 2.02, True)
    result = speed_goal.filled(model, calibrated, 2.0, inputs)
    assert seen == [([5, 10], [8, 16])]  # 4.8 and 9.6 channels asked: rounded up, never down
    filled = replace(calibrated, speedup=pytest.approx(2.02 * ratio), round_to=8)
    assert result == (filled if kept else calibrated)
    assert speed_goal.filled(model, result, 2.0, inputs) is result  # whole vectors already


def test_a_budget_timed_again_outweighs_a_fit_smoothed_over_a_step():
    """Time steps with whole channels: 0.36 and 0.35 kept give the same channels, timed
    2.87x twice, while 0.33 kept measured 3.22x. The line through them puts 2.95x at 0.35,
    within 2% of a 3x goal; pooled with its budget's two timings it is 2.90x, not within."""
    step, below = {"a": 0.64}, {"a": 0.67}
    tried = [(0.333, 3.22, below), (0.357, 2.87, step), (0.349, 2.87, step)]
    speedups = speed_goal.pooled(tried, 3.0)
    assert speedups[1:] == pytest.approx([2.87, 2.90], abs=0.01)
    assert not any(speed_goal._within(s, 3.0) for s in speedups)
    assert speedups[0] == pytest.approx(3.18, abs=0.01)  # timed once: halfway to the line


def _timed_by_level(monkeypatch, truth: dict[float, float]) -> list[float]:
    """Times each cut at ``truth`` of its level, once a call; returns the levels cut."""

    def timed(_dense, pruned, _inputs, timings):
        assert timings == 1
        return truth[pruned.level]

    cut = []
    monkeypatch.setattr(
        speed_goal,
        "_cut_copy",
        lambda _m, b, *_: cut.append(b["a"]) or SimpleNamespace(level=b["a"]),
    )
    monkeypatch.setattr(speed_goal, "measured_speedup", timed)
    return cut


def test_where_no_budget_is_within_the_nearest_are_timed_again_before_one_is_chosen(
    monkeypatch,
):
    """A 3x goal out of reach: the try timed 2.90x was lucky (it measures 2.40x after), the
    one timed 1.5x unlucky (2.60x after). Chosen on the first timings the fastest is the
    lucky one; timed again, the other, and its speed-up is the new timings'. A budget tried
    twice is timed again once, so the third nearest budget gets its turn."""
    cut = _timed_by_level(monkeypatch, {0.03: 2.40, 0.05: 2.60, 0.2: 1.5, 0.3: 1.2})
    tried = [
        SpeedCandidate("FLOPs", {}, {"a": level}, first, False)
        for level, first in ((0.03, 2.90), (0.2, 1.6), (0.2, 1.55), (0.05, 1.5), (0.3, 1.2))
    ]
    (chosen,) = speed_goal.fallback(None, tried, 3.0, ())
    assert chosen.budget == {"a": 0.05} and chosen.speedup == 2.60 and not chosen.within
    assert cut == [0.03, 0.2, 0.05]  # the three nearest budgets, the one tried twice cut once


def test_where_no_budget_is_within_each_cost_models_nearest_goes_to_the_accuracy_trial(
    monkeypatch,
):
    """A 3x goal out of reach: uniform cuts reach 2.40x, FLOP budgets 2.25x, the latency
    table 1.8x. Each cost model's nearest is timed again, though the latency table's is not
    among the three nearest tries, and goes to the trial; the nearest comes first."""
    cut = _timed_by_level(monkeypatch, {0.1: 2.40, 0.2: 2.35, 0.3: 2.25, 0.5: 1.8})
    tried = [
        SpeedCandidate(to, {}, {"a": level}, first, False)
        for to, level, first in (
            ("uniform cuts", 0.1, 2.4), ("uniform cuts", 0.2, 2.35), ("FLOPs", 0.3, 2.3),
            ("FLOPs", 0.4, 2.2), ("measured latency", 0.5, 1.8),
        )
    ]  # fmt: skip
    chosen = speed_goal.fallback(None, tried, 3.0, ())
    assert [(c.allocated_to, c.speedup) for c in chosen] == [
        ("uniform cuts", 2.40),
        ("FLOPs", 2.25),
        ("measured latency", 1.8),
    ]
    assert cut == [0.1, 0.2, 0.3, 0.5]  # the three nearest, then the latency table's nearest


def test_where_no_budget_is_within_the_nearest_either_way_comes_first(monkeypatch):
    """For a 3x goal, 3.62x meets it but is 21% past it, where 2.85x falls 5% short: the
    latter is the nearest."""
    _timed_by_level(monkeypatch, {0.1: 3.62, 0.2: 2.85, 0.3: 2.71})
    tried = [
        SpeedCandidate(to, {}, {"a": level}, speedup, False)
        for to, level, speedup in (
            ("measured latency", 0.1, 3.62), ("uniform cuts", 0.2, 2.85), ("FLOPs", 0.3, 2.71)
        )
    ]  # fmt: skip
    chosen = speed_goal.fallback(None, tried, 3.0, ())
    assert [(c.allocated_to, c.speedup) for c in chosen] == [
        ("uniform cuts", 2.85),
        ("FLOPs", 2.71),
        ("measured latency", 3.62),
    ]


@pytest.mark.parametrize(
    ("speedup", "metric", "expected"),
    [
        (3.0, 0.9, 0.9),  # on the goal
        (2.8, 0.9, 0.9),  # within 10%: timings do not tell it from the goal
        (3.3, 0.9, 0.9),
        (3.0 / 1.1 / 1.2, 0.9, 0.9 / 1.2),  # 20% further off: 1/1.2 of the metric
        (3.0 * 1.1 * 1.2, 0.9, 0.9 / 1.2),  # as far past it
        (3.0 * 1.1 * 1.2, -0.5, -0.5 * (2 - 1 / 1.2)),  # a metric below zero falls as far
    ],
)
def test_a_trial_metric_is_discounted_by_how_far_past_ten_percent_off_the_goal_it_ran(
    speedup, metric, expected
):
    assert speed_goal.discounted(metric, speedup, 3.0) == pytest.approx(expected)


def test_a_collapsed_budget_nearer_an_unreachable_goal_loses_to_an_accurate_slower_one():
    """The MobileNetV2 of the speed benchmark at 3x (seed 0): uniform cuts at 2.44x kept
    0.096 after the trial, FLOP budgets at 2.27x 0.326 (as they would at 2.90x);
    at 2.85x against 2.71x, both within 10%, the more accurate wins, and 3.62x, 21% past the
    goal, loses to 2.85x at equal accuracy."""
    assert speed_goal.discounted(0.326, 2.27, 3.0) > speed_goal.discounted(0.096, 2.44, 3.0)
    assert speed_goal.discounted(0.326, 2.27, 3.0) > speed_goal.discounted(0.096, 2.90, 3.0)
    assert speed_goal.discounted(0.95, 2.71, 3.0) > speed_goal.discounted(0.94, 2.85, 3.0)
    assert speed_goal.discounted(0.94, 2.85, 3.0) > speed_goal.discounted(0.94, 3.62, 3.0)
