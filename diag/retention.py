"""Growth per request: how many bytes each request of each endpoint leaves behind.

Memory's lower envelope is regressed on the cumulative request counts of the busiest endpoints
and on time, over the last hour of 30 s buckets, using increments between groups (what each
interval added) so a level that predates the window does not matter. When the load varies,
the regression separates growth that follows load (bytes per request) from growth that follows
time (bytes per second). When the load is steady the two are indistinguishable, and the growth
is attributed to requests with ``follows="undetermined"``. Pure: samples in, estimates out.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

BUCKET_SECONDS = 30.0
WINDOW_BUCKETS = 120
MAX_ENDPOINTS = 4
MIN_GROUPS = 6

Follows = Literal["load", "time", "undetermined"]


@dataclass(frozen=True, slots=True)
class Retention:
    per_request: dict[str, float]  # endpoint -> bytes retained per request
    per_second: float  # growth not explained by requests
    follows: Follows


def _solve(matrix: list[list[float]], vector: list[float]) -> list[float] | None:
    """Gaussian elimination with partial pivoting; None when (nearly) singular."""
    n = len(vector)
    a = [[*row[:], vector[i]] for i, row in enumerate(matrix)]
    scale = max((abs(x) for row in matrix for x in row), default=0.0) or 1.0
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(a[r][col]))
        if abs(a[pivot][col]) < 1e-9 * scale:
            return None
        a[col], a[pivot] = a[pivot], a[col]
        for r in range(col + 1, n):
            f = a[r][col] / a[col][col]
            for c in range(col, n + 1):
                a[r][c] -= f * a[col][c]
    x = [0.0] * n
    for r in range(n - 1, -1, -1):
        x[r] = (a[r][n] - sum(a[r][c] * x[c] for c in range(r + 1, n))) / a[r][r]
    return x


def _least_squares(rows: list[list[float]], ys: list[float]) -> tuple[list[float], float] | None:
    """Coefficients and residual sum of squares of ys ~ rows (no intercept)."""
    k = len(rows[0])
    normal = [[sum(r[i] * r[j] for r in rows) for j in range(k)] for i in range(k)]
    rhs = [sum(r[i] * y for r, y in zip(rows, ys, strict=True)) for i in range(k)]
    coef = _solve(normal, rhs)
    if coef is None:
        return None
    residual = sum(
        (y - sum(c * x for c, x in zip(coef, r, strict=True))) ** 2
        for r, y in zip(rows, ys, strict=True)
    )
    return coef, residual


@dataclass
class _Bucket:
    start: float
    floor: float
    requests: dict[str, float]  # cumulative, at the bucket's last sample


class RetentionEstimator:
    def __init__(self) -> None:
        self._buckets: deque[_Bucket] = deque(maxlen=WINDOW_BUCKETS)
        self._current: _Bucket | None = None
        self.estimate: Retention | None = None

    def update(self, t: float, value: float, requests: Mapping[str, float]) -> Retention | None:
        current = self._current
        if current is not None and t < current.start + BUCKET_SECONDS:
            current.floor = min(current.floor, value)
            current.requests = dict(requests)
            return self.estimate
        if current is not None:
            self._buckets.append(current)
            self.estimate = self._estimate()
        self._current = _Bucket(t, value, dict(requests))
        return self.estimate

    def _estimate(self) -> Retention | None:
        buckets = list(self._buckets)
        if len(buckets) < 2 * MIN_GROUPS:
            return None
        # Groups of buckets, each reduced to its floor, so a sawtooth does not read as growth.
        size = max(2, len(buckets) // 12)
        groups = [buckets[i : i + size] for i in range(0, len(buckets) - size + 1, size)]
        points = [(g[-1].start, min(b.floor for b in g), g[-1].requests) for g in groups]
        if len(points) < MIN_GROUPS:
            return None
        first, last = points[0][2], points[-1][2]
        served = {e: n - first.get(e, 0.0) for e, n in last.items()}
        busiest = [e for e, n in sorted(served.items(), key=lambda kv: -kv[1]) if n > 0]
        busiest = busiest[:MAX_ENDPOINTS]
        if not busiest:
            return None
        steps = list(itertools.pairwise(points))
        ys = [b[1] - a[1] for a, b in steps]
        load_rows = [[b[2].get(e, 0.0) - a[2].get(e, 0.0) for e in busiest] for a, b in steps]
        time_rows = [[b[0] - a[0]] for a, b in steps]
        load = _least_squares(load_rows, ys)
        if load is None:
            return None
        joint = _least_squares([lr + tr for lr, tr in zip(load_rows, time_rows, strict=True)], ys)
        alone = _least_squares(time_rows, ys)
        if joint is not None and alone is not None:
            # Growth follows whichever single explanation fits clearly better than the other;
            # under steady load they fit alike and the joint fit is (nearly) singular.
            follows: Follows | None = None
            if alone[1] > 2 * load[1] + 1e-9:
                follows = "load"
            elif load[1] > 2 * alone[1] + 1e-9:
                follows = "time"
            if follows == "time":
                coef = joint[0]
                return Retention(dict(zip(busiest, coef[:-1], strict=True)), coef[-1], follows)
            if follows == "load":
                return Retention(dict(zip(busiest, load[0], strict=True)), 0.0, follows)
        return Retention(dict(zip(busiest, load[0], strict=True)), 0.0, "undetermined")
