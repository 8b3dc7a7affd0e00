"""Shapes neither corpus generator draws, to show where the detector stands on them.

    python -m benchmarks.detector.shapes [--seeds N]

Each shape is a leak or a quiet service with its own seeded draws. For a quiet shape the table
gives the false leak episodes; for a leak shape, the lead fraction (the share of onset-to-OOM
still ahead at the first alert) as median and lowest over the draws, and how many were caught.
Both for the detector at its default (as ``diag analyze`` judges a recording), as the agent
and ``diag watch`` judge one process's series (``one_process``: no fall is a restart), and for
the Prometheus rule users write today
(``baseline.py``: ``predict_linear`` over 1 h with the uptime guard), alerting where the limit
is 4 h ahead and where it is 24 h ahead, in the same run.

These shapes were written on 2026-12-04 while studying the detector's limits, after its
constants were set: they are diagnostic, not a score. They show known limits (README, "Known
limits"), and a change judged on them is judged on data that shaped it.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import numpy as np

from benchmarks.detector import baseline
from benchmarks.detector.score import judge
from benchmarks.detector.traces import HOUR, MINUTE, GiB, MiB, Trace
from diag.detect import Alert, DetectorConfig, replay

#: The rules compared against: a 1 h fit, alerting when the limit is 4 h or 24 h ahead.
RULES = (baseline.Rule(HOUR, 4 * HOUR), baseline.Rule(HOUR, 24 * HOUR))

Draw = Callable[[np.random.Generator, str], Trace]


def _times(hours: float, step: float) -> np.ndarray:
    return np.arange(0.0, hours * HOUR, step)


def _sawtooth(rng: np.random.Generator, t: np.ndarray, period: float, amplitude: float):
    """GC cycles: memory climbs for a jittered period, then a collection drops it back."""
    lengths = period * rng.uniform(0.8, 1.2, int(t[-1] / period * 1.3) + 5)
    edges = np.concatenate(([-rng.uniform(0, period)], np.cumsum(lengths)))
    k = np.searchsorted(edges, t, side="right") - 1
    return amplitude * (t - edges[k]) / lengths[k]


def _until_oom(name: str, t: np.ndarray, v: np.ndarray, limit: float, onset: float) -> Trace:
    """A leak's trace, ending at its OOM: the first sample at or above the limit."""
    over = np.flatnonzero(v >= limit)
    end = int(over[0]) + 1 if len(over) else len(t)
    t, v = t[:end], v[:end]
    family = name.rsplit("/", 1)[0]
    return Trace(name, family, "leak", False, t, v, limit, onset, float(t[-1]))


def _quiet(name: str, t: np.ndarray, v: np.ndarray, limit: float, requests=None) -> Trace:
    family = name.rsplit("/", 1)[0]
    return Trace(name, family, "quiet", False, t, v, limit, requests=requests)


def long_gc_sawtooth(rng: np.random.Generator, name: str) -> Trace:
    """A steady leak under a GC sawtooth of 6-20 minutes (a big heap collected rarely),
    3-6 h from onset to OOM, sampled every 10 s."""
    t = _times(12, 10.0)
    level, limit, onset = 2 * GiB, 3 * GiB, rng.uniform(3, 5) * HOUR
    amplitude = rng.uniform(0.03, 0.10) * level
    period = float(np.exp(rng.uniform(np.log(6 * MINUTE), np.log(20 * MINUTE))))
    rate = (limit - level - amplitude) / (rng.uniform(3, 6) * HOUR)
    v = level + _sawtooth(rng, t, period, amplitude) + rng.normal(0, 4 * MiB, len(t))
    v += rate * np.clip(t - onset, 0, None)
    return _until_oom(name, t, v, limit, onset)


def batch_job_leak(rng: np.random.Generator, name: str) -> Trace:
    """A worker running a job every 15-30 minutes (3-8 minutes of 300-500 MiB, freed after)
    where each job from the onset on leaves 10-30 MiB behind: a staircase of even steps."""
    t = _times(36, 5.0)
    level, onset = 1.5 * GiB, rng.uniform(3, 6) * HOUR
    every = rng.uniform(15, 30) * MINUTE
    v = level + rng.normal(0, 3 * MiB, len(t))
    left = rng.uniform(10, 30) * MiB
    for start in np.arange(rng.uniform(0, every), t[-1], every):
        start += rng.normal(0, MINUTE)
        lasts = rng.uniform(3, 8) * MINUTE
        inside = (t >= start) & (t < start + lasts)
        v[inside] += rng.uniform(300, 500) * MiB * np.minimum(1, (t[inside] - start) / MINUTE)
        if start >= onset:
            v[t >= start + lasts] += left * rng.uniform(0.5, 1.5)
    # The limit 4-12 h of steps above the onset's peak.
    steps_to_oom = rng.uniform(4, 12) * HOUR / every
    return _until_oom(name, t, v, level + 500 * MiB + steps_to_oom * left, onset)


def late_cache_fill(rng: np.random.Generator, name: str) -> Trace:
    """A cache that starts filling hours into the process's life (a new tenant, a new key
    space) toward its bound: 10-25 % of the level, time constant 1-4 h."""
    t = _times(30, 10.0)
    level = 2 * GiB
    start, tau = rng.uniform(2, 6) * HOUR, rng.uniform(1, 4) * HOUR
    fill = rng.uniform(0.10, 0.25) * level * (1 - np.exp(-np.clip(t - start, 0, None) / tau))
    return _quiet(name, t, level + fill + rng.normal(0, 4 * MiB, len(t)), 2 * level)


def load_ramp_without_counts(rng: np.random.Generator, name: str) -> Trace:
    """Traffic that climbs by a third to two thirds over 1-2 h and holds, with a working set
    that follows it, and no request counts to tell."""
    t = _times(24, 10.0)
    level, start, lasts = 2 * GiB, rng.uniform(3, 6) * HOUR, rng.uniform(1, 2) * HOUR
    ramp = rng.uniform(0.3, 0.6) * 0.5 * level * np.clip((t - start) / lasts, 0, 1)
    return _quiet(name, t, level + ramp + rng.normal(0, 4 * MiB, len(t)), 2 * level)


def daily_cycle_without_counts(rng: np.random.Generator, name: str) -> Trace:
    """A working set that swings by 10-20 % of the level over the day, without counts."""
    t = _times(48, 15.0)
    level, phase = 2 * GiB, rng.uniform()
    swing = rng.uniform(0.10, 0.20) * level * 0.5 * (1 - np.cos(2 * np.pi * (t / 86400 + phase)))
    return _quiet(name, t, level + swing + rng.normal(0, 4 * MiB, len(t)), 2 * level)


def peak_sized_pools(rng: np.random.Generator, name: str) -> Trace:
    """An inference server whose pools grow to its peak concurrency (256 MiB blocks, never
    given back) under a daily traffic cycle of 0.5-6 req/s, with request counts: memory climbs
    through the first morning and holds at the peak after."""
    t = _times(48, 5.0)
    rate = 0.5 + 5.5 * 0.5 * (1 - np.cos(2 * np.pi * (t / 86400 - rng.uniform(0, 0.2))))
    arrivals = rng.poisson(rate * 5.0)
    busy = np.zeros(len(t))
    for i in range(1, len(t)):  # requests in flight, each taking ~20 s
        busy[i] = busy[i - 1] * np.exp(-5.0 / 20.0) + arrivals[i]
    blocks = np.ceil(np.maximum.accumulate(busy) / 8) * 256 * MiB
    v = 2 * GiB + blocks + busy * 12 * MiB + rng.normal(0, 8 * MiB, len(t))
    return _quiet(name, t, v, 16 * GiB, requests=np.cumsum(arrivals).astype(float))


def _flushed_cache(rng: np.random.Generator, name: str, counts: bool) -> Trace:
    """A cache of 36-50 % of the level emptied at once every 20-60 minutes (a config reload, a
    sweep of every expired entry) and refilled by the requests over 5-30 minutes, 12 h at 5 s:
    each flush is a fall of a third or more that stays, as a restart's does."""
    t = _times(12, 5.0)
    level, share = 1 * GiB, rng.uniform(0.36, 0.50)
    refill = rng.uniform(5, 30) * MINUTE
    since = np.full(len(t), np.inf)
    for flush in np.cumsum(rng.uniform(20, 60, 40) * MINUTE):
        since = np.where(t >= flush, t - flush, since)
    cache = share * level * np.minimum(1.0, since / refill)
    v = (1 - share) * level + cache + rng.normal(0, 3 * MiB, len(t))
    requests = np.cumsum(rng.poisson(25.0, len(t))).astype(float) if counts else None
    return _quiet(name, t, v, 2 * level, requests=requests)


def flushed_cache_with_counts(rng: np.random.Generator, name: str) -> Trace:
    return _flushed_cache(rng, name, counts=True)


def flushed_cache_without_counts(rng: np.random.Generator, name: str) -> Trace:
    return _flushed_cache(rng, name, counts=False)


SHAPES: dict[str, Draw] = {
    "long_gc_sawtooth": long_gc_sawtooth,
    "batch_job_leak": batch_job_leak,
    "late_cache_fill": late_cache_fill,
    "load_ramp_without_counts": load_ramp_without_counts,
    "daily_cycle_without_counts": daily_cycle_without_counts,
    "peak_sized_pools": peak_sized_pools,
    "flushed_cache_with_counts": flushed_cache_with_counts,
    "flushed_cache_without_counts": flushed_cache_without_counts,
}


def _ours(trace: Trace, one_process: bool = False) -> list[Alert]:
    """``one_process``: as the agent and ``diag watch`` judge it (no fall is a restart)."""
    requests = None if trace.requests is None else trace.requests.tolist()
    config = DetectorConfig(one_process=one_process)
    return replay(
        trace.times.tolist(), trace.values.tolist(), trace.limit, config=config, requests=requests
    )


def _rules(trace: Trace) -> dict[baseline.Rule, list[Alert]]:
    return baseline.evaluate(trace.times, trace.values, trace.limit, rules=RULES)


def _summary(traces: list[Trace], alerts: list[list[Alert]]) -> str:
    outcomes = [judge(trace, found) for trace, found in zip(traces, alerts, strict=True)]
    if traces[0].kind == "quiet":
        alerted = sum(o.false_episodes > 0 for o in outcomes)
        return f"{sum(o.false_episodes for o in outcomes)} false ({alerted}/{len(traces)})"
    leads = [o.lead or 0.0 for o in outcomes]
    caught = sum(bool(o.caught) for o in outcomes)
    return f"{statistics.median(leads):.2f} / {min(leads):.2f} ({caught}/{len(traces)})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.detector.shapes")
    parser.add_argument("--seeds", type=int, default=8, help="draws per shape (default 8)")
    args = parser.parse_args(argv)
    print(
        "quiet shapes: false leak episodes (traces alerted); leak shapes: lead fraction"
        " median / lowest (caught)"
    )
    header = ["diag (default)", "diag, one process", *(r.short for r in RULES)]
    print(f"{'shape':<31}" + "".join(f"{cell:<20}" for cell in header))
    for index, (shape, draw) in enumerate(SHAPES.items()):
        traces = [
            draw(np.random.default_rng([index, seed]), f"{shape}/{seed:03d}")
            for seed in range(args.seeds)
        ]
        row = [_summary(traces, [_ours(trace, one) for trace in traces]) for one in (False, True)]
        by_rule = [_rules(trace) for trace in traces]
        row += [_summary(traces, [found[rule] for found in by_rule]) for rule in RULES]
        print(f"{shape:<31}" + "".join(f"{cell:<20}" for cell in row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
