"""igcritic eval's numbers: percentiles, the safety boundary and bootstrap intervals checked by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers_eval import pct

from igcritic.eval.stats import mean_ci, resample_indices, summarize


def test_percentiles_on_known_latencies():
    rows = [
        {"cost_eval": 0.0, "reward_eval": 1.0, "seconds": float(s), "new_tokens": 10, "refused": False}
        for s in range(1, 21)
    ]
    s = summarize("m", rows, budget=0.0, wall_seconds=4.0)
    assert s.latency_p50 == pytest.approx(10.5)
    assert s.latency_p95 == pytest.approx(19.05)
    assert s.latency_mean == pytest.approx(10.5)
    assert s.tokens_per_s == pytest.approx(200 / 4.0)
    assert math.isnan(s.tracked_safety_rate)
    one = summarize("m", rows[:1], budget=0.0, wall_seconds=1.0)
    assert one.latency_p50 == one.latency_p95 == 1.0


def test_safety_boundary_and_refusal_count():
    costs, refused = [-1.0, 0.0, 1e-6, 2.0], [True, False, True, False]
    rows = [
        {"cost_eval": c, "reward_eval": 0.0, "seconds": 1.0, "new_tokens": 1, "refused": r, "safe": True}
        for c, r in zip(costs, refused, strict=True)
    ]
    s = summarize("m", rows, budget=0.0, wall_seconds=1.0)
    assert s.safety_rate == pytest.approx(0.5)  # S_T <= d: -1 and exactly 0 are safe
    assert s.refusal_rate == pytest.approx(0.5)
    assert s.tracked_safety_rate == 1.0


def test_bootstrap_interval_on_a_hand_computed_case():
    values = [0.0, 1.0, 0.0, 1.0]
    idx = np.array([[0, 0, 0, 0], [1, 1, 1, 1], [0, 1, 2, 3], [1, 1, 0, 0], [3, 3, 3, 2]])
    # resample means 0, 1, 0.5, 0.5, 0.75 -> sorted 0, .5, .5, .75, 1; percentile 2.5 sits at position
    # 4 * 0.025 = 0.1 (0 + 0.1 * 0.5 = 0.05), percentile 97.5 at 3.9 (0.75 + 0.9 * 0.25 = 0.975)
    mean, lo, hi = mean_ci(values, idx)
    assert mean == 0.5
    assert (lo, hi) == pytest.approx((0.05, 0.975))
    assert (lo, hi) == pytest.approx((pct([0, 1, 0.5, 0.5, 0.75], 2.5), pct([0, 1, 0.5, 0.5, 0.75], 97.5)))
    assert math.isnan(mean_ci(values, None)[1])  # no resamples: no interval


def test_bootstrap_interval_is_seeded_and_has_the_normal_width():
    a, b = resample_indices(400, 4000, seed=1), resample_indices(400, 4000, seed=1)
    assert a.shape == (4000, 400) and (a == b).all() and 0 <= a.min() and a.max() == 399
    assert not (a == resample_indices(400, 4000, seed=2)).all()
    values = np.r_[np.ones(120), np.zeros(280)]  # p = 0.3, n = 400
    _, lo, hi = mean_ci(values, a)
    half = 1.96 * math.sqrt(0.3 * 0.7 / 400)  # 0.0449; a 90% interval would be 0.0377 wide on each side
    assert lo == pytest.approx(0.3 - half, abs=0.004) and hi == pytest.approx(0.3 + half, abs=0.004)
