"""How far a corpus's figures can be trusted: exact 95 % intervals for the benchmark's counts.

A false-alert rate of 2 episodes in 50 hours and one of 100 in 2,500 read the same, 0.04 an
hour; only the second rules out 0.01. Each interval here is exact for its model (no normal
approximation, which fails at the small counts that matter: 0 false alerts, 10 leaks):

- a count of events over an exposure: the Poisson mean (Garwood). Alert episodes cluster in
  traces (a cache that fills twice a day alerts twice), so the true uncertainty is wider;
  this interval is the least it can be;
- a share of trials: the binomial proportion (Clopper-Pearson);
- a quantile of a sample (the lead fraction's P10): the order statistics that bracket it with
  the coverage asked, distribution-free. A bound that needs a rank outside the sample is open
  (None): 10 leaks cannot say how low the worst tenth may reach.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

LEVEL = 0.95


def poisson_interval(count: int, level: float = LEVEL) -> tuple[float, float]:
    """Exact interval for the mean of a Poisson variable observed as ``count``."""
    tail = (1 - level) / 2
    high_end = count + 20 * math.sqrt(count + 1) + 20
    # The least mean under which ``count`` or more is still as likely as ``tail`` ...
    low = 0.0 if count == 0 else _root(lambda m: _poisson_cdf(count - 1, m) - (1 - tail), high_end)
    # ... and the greatest under which ``count`` or fewer is.
    high = _root(lambda m: _poisson_cdf(count, m) - tail, high_end)
    return low, high


def binomial_interval(successes: int, trials: int, level: float = LEVEL) -> tuple[float, float]:
    """Exact interval for a proportion from ``successes`` of ``trials``."""
    if trials <= 0:
        return math.nan, math.nan
    tail = (1 - level) / 2
    low = (
        0.0
        if successes == 0
        else _root(lambda p: _binomial_cdf(successes - 1, trials, p) - (1 - tail), 1.0)
    )
    high = (
        1.0
        if successes == trials
        else _root(lambda p: _binomial_cdf(successes, trials, p) - tail, 1.0)
    )
    return low, high


def quantile_interval(
    values: Sequence[float], q: float, level: float = LEVEL
) -> tuple[float | None, float | None]:
    """The order statistics that hold the population's ``q`` quantile with ``level``
    confidence; None for a side the sample is too small to bound."""
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        return None, None
    tail = (1 - level) / 2
    # The k-th smallest (1-based) lies below the quantile as often as Binomial(n, q) >= k.
    lower_rank = 0  # the largest k with P(B < k) <= tail; 0: none
    while lower_rank < n and _binomial_cdf(lower_rank, n, q) <= tail:
        lower_rank += 1
    upper_rank = n + 1  # the least k with P(B < k) >= 1 - tail; n + 1: none
    for k in range(1, n + 1):
        if _binomial_cdf(k - 1, n, q) >= 1 - tail:
            upper_rank = k
            break
    low = ordered[lower_rank - 1] if lower_rank >= 1 else None
    high = ordered[upper_rank - 1] if upper_rank <= n else None
    return low, high


def _poisson_cdf(k: int, mean: float) -> float:
    if k < 0:
        return 0.0
    if mean <= 0:
        return 1.0
    log_mean = math.log(mean)
    return min(1.0, sum(math.exp(i * log_mean - mean - math.lgamma(i + 1)) for i in range(k + 1)))


def _binomial_cdf(k: int, n: int, p: float) -> float:
    if k < 0:
        return 0.0
    if k >= n or p <= 0:
        return 1.0
    if p >= 1:
        return 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    total = sum(
        math.exp(
            math.lgamma(n + 1)
            - math.lgamma(i + 1)
            - math.lgamma(n - i + 1)
            + i * log_p
            + (n - i) * log_q
        )
        for i in range(k + 1)
    )
    return min(1.0, total)


def _root(decreasing: Callable[[float], float], high: float) -> float:
    """Where a function that falls from positive (at 0) to negative (at ``high``) crosses 0."""
    low = 0.0
    for _ in range(200):
        mid = (low + high) / 2
        if decreasing(mid) > 0:
            low = mid
        else:
            high = mid
    return (low + high) / 2
