"""diag's benchmarks: ``python -m benchmarks [NAME...] [--quick]`` (or ``make bench``).

Speed is measured, not hoped for. The machines this runs on are small, shared and noisy, so
every benchmark measures its baseline in the same run, interleaved with the thing measured, and
prints ratios against it next to the absolute figures. Each benchmark ends with one line per
target (``... PASS`` / ``... FAIL``) and exits 1 when a target is missed.

Each benchmark is a module with a ``main(argv) -> int`` and runs in its own process (a clean
heap, its own torch thread settings): ``python -m benchmarks.bench_tick --quick`` runs one
alone. ``--quick`` is a smoke test: short, it prints the same figures, but only a crash (or an
agent that never ticked) fails it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["BENCHMARKS", "fmt_ratio", "fmt_us", "iqr", "median", "percentile", "verdict"]

#: name on the command line -> module under ``benchmarks``
BENCHMARKS = {
    "tick": "bench_tick",
    "overhead": "bench_overhead",
    "history": "bench_history",
    "watch": "bench_watch",
    "attach": "bench_attach",
    "dump": "bench_dump",
    "resources": "bench_resources",
    "creation": "bench_creation",
    "detector": "detector",
    "leaktests": "bench_leaktests",
    "heap": "bench_heap",
    "account": "bench_account",
}


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50.0)


def iqr(values: Sequence[float]) -> tuple[float, float]:
    """(25th, 75th) percentiles."""
    return percentile(values, 25.0), percentile(values, 75.0)


def fmt_us(ns: float) -> str:
    """Nanoseconds as a short microsecond (or millisecond) figure."""
    if math.isnan(ns):
        return "n/a"
    us = ns / 1000.0
    if us >= 10_000:
        return f"{us / 1000.0:.1f} ms"
    if us >= 1000:
        return f"{us / 1000.0:.2f} ms"
    if us >= 100:
        return f"{us:.0f} µs"
    if us >= 10:
        return f"{us:.1f} µs"
    return f"{us:.2f} µs"


def fmt_ratio(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}x" if value < 10 else f"{value:.1f}x"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"
