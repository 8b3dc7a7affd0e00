"""The benchmark's 95 % intervals against published values, and what they say of the targets."""

from __future__ import annotations

import pytest

from benchmarks.detector import score
from benchmarks.detector.intervals import binomial_interval, poisson_interval, quantile_interval


@pytest.mark.parametrize(
    ("count", "low", "high"),
    [
        # Garwood's exact limits, as tabled (e.g. Ulm 1990; NIST's Poisson table).
        (0, 0.0, 3.6889),
        (1, 0.0253, 5.5716),
        (2, 0.2422, 7.2247),
        (10, 4.7954, 18.3904),
    ],
)
def test_poisson_interval_matches_the_exact_table(count, low, high):
    assert poisson_interval(count) == pytest.approx((low, high), abs=1e-4)


@pytest.mark.parametrize(
    ("successes", "trials", "low", "high"),
    [
        # Clopper-Pearson limits (the beta quantiles), as tabled.
        (0, 10, 0.0, 0.3085),
        (10, 10, 0.6915, 1.0),
        (5, 10, 0.1871, 0.8129),
        (8, 8, 0.6306, 1.0),
    ],
)
def test_binomial_interval_matches_clopper_pearson(successes, trials, low, high):
    assert binomial_interval(successes, trials) == pytest.approx((low, high), abs=1e-4)


def test_quantile_interval_brackets_by_order_statistics():
    # The median of 100: the 40th and 61st smallest (the classic distribution-free table).
    assert quantile_interval(list(range(100)), 0.5) == (39, 60)
    # The 10th percentile of 10 values: P(none of 10 below it) = 0.9^10 = 0.35, so nothing
    # in the sample bounds it from below; from above, the 4th smallest (P(B <= 3) = 0.987).
    assert quantile_interval([0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6, 1.0], 0.1) == (
        None,
        0.4,
    )
    assert quantile_interval([], 0.1) == (None, None)


def test_figures_say_whether_a_corpus_can_tell_a_target():
    # Two false episodes in 50 hours read 0.04 an hour, and cannot rule out 0.01; none in
    # 400 hours show it met; 40 in 1000 show it missed.
    small = score.Figures(false_episodes=2, judged_hours=50.0)
    assert "cannot tell" in score._at_most(small.fa_rate_interval, 0.01, 4)
    assert score._at_most(score.Figures(0, 400.0).fa_rate_interval, 0.01, 4).endswith("met")
    assert score._at_most(score.Figures(40, 1000.0).fa_rate_interval, 0.01, 4).endswith("missed")
    # Ten leads: the P10 has no lower bound in the sample.
    ten = score.Figures(leads=[0.2, 0.7, 0.8, 0.8, 0.9, 0.9, 0.9, 0.9, 0.95, 0.95])
    assert score._at_least(ten.lead_p10_interval, 0.65, 2) == "95 %: ?-0.80, cannot tell"
    many = score.Figures(leads=[0.9] * 200)
    assert score._at_least(many.lead_p10_interval, 0.65, 2).endswith("met")
    assert score.Figures(leads=[0.3] * 200).summary()["lead_p10_95"] == [0.3, 0.3]
