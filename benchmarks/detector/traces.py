"""Memory traces to judge the growth detector on: seeded synthetic families and real recordings.

Every synthetic trace is a process (or a few restarts of one) sampled every 1–15 s: a warm-up
from an interpreter-sized floor to a working level of 1–6 GiB, then the family's behaviour, plus
measurement noise of a few MiB (white plus slowly correlated, like allocator churn), and often
a few gaps of minutes with no samples. Quiet traces stay well below their limit; a leak trace
ends at its OOM, the first sample at or above the limit, so for a leak under a sawtooth it is the
upper envelope that hits.

Quiet families (6–48 h):
  warmup          exponential or log-like rise over minutes, then a plateau
  warmup_restart  the same with 1–4 restarts: a drop to the floor and a new warm-up
  sawtooth        GC/arena sawtooth, period 30 s–5 min (OOD: 5–20 min), 2–15 % of the level
  cache           a cache filling to a bound (saturating or sublinear-then-full) over
                  15 min–3 h (OOD: about 4 h), bound 20–150 % of the level
  allocator       caching-allocator reserved memory: a few step-ups on new peak batches,
                  spacing growing geometrically, then stable; quantised to 2 MiB, little noise
  burst           load bursts: the load ramps up over 0.5–10 min, holds 1–12 min (OOD: 15–40
                  min), down over 1–5 min, memory wobbling with the requests in flight while
                  up; a fragmentation residue when a burst exceeds every earlier one
  steady          a warm-up and noise only
  mixed           2–3 of sawtooth, cache, bursts and allocator steps at once
Leak families (a warm-up and a steady 0.5–12 h, or the leak from the start; onset to OOM
mostly 1 h–2 days, about one in ten 20–60 min):
  linear          a constant rate
  staircase       Poisson requests each retaining a fixed 0.5–4 MiB chunk, the request rate
                  following a daily load cycle
  slow            linear or staircase taking 1–5 days, sampled every 15–60 s
  sawtooth_leak   a leak under a GC sawtooth
  allocator_leak  a leak seen through the caching allocator: reserved memory rises in
                  segment-sized steps, on top of the usual peak-batch steps

The "test" split uses other seeds and shifted ranges (see ``TUNE``/``TEST``), so a detector
tuned on "tune" is judged on data it has not seen.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

MiB = 1024.0**2
GiB = 1024.0**3
MINUTE = 60.0
HOUR = 3600.0
DAY = 86400.0

#: Cap on samples a trace, so the whole benchmark runs in minutes; long traces sample coarser.
MAX_SAMPLES = 40_000
NICE_INTERVALS = (1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0)
REAL_DIR = Path(__file__).resolve().parents[2] / "tests" / "data" / "traces"


@dataclass(frozen=True)
class Trace:
    name: str
    family: str
    kind: str  # "leak" or "quiet"
    ood: bool  # parameters outside the ranges the detector is meant to be tuned on
    times: np.ndarray  # seconds, increasing
    values: np.ndarray  # bytes
    limit: float  # bytes
    t_leak: float | None = None  # leak onset; None for quiet traces
    t_oom: float | None = None  # the last sample of a leak trace; None for quiet traces
    starts: tuple[float, ...] = (0.0,)  # process (re)starts; the first is the trace start
    source: str = "synthetic"
    #: Cumulative requests served at each sample (the agent's request counter), where the
    #: workload has requests; None where it does not.
    requests: np.ndarray | None = None

    @property
    def hours(self) -> float:
        return float(self.times[-1] - self.times[0]) / HOUR

    @property
    def judged_hours(self) -> float:
        """Hours in which any alert is false: all of a quiet trace, a leak's pre-onset part."""
        end = self.times[-1] if self.t_leak is None else self.t_leak
        return max(0.0, float(end - self.times[0])) / HOUR

    @property
    def onset_to_oom(self) -> float | None:
        if self.t_leak is None or self.t_oom is None:
            return None
        return self.t_oom - self.t_leak


@dataclass(frozen=True)
class Ranges:
    """Parameter ranges of one split (low, high); minutes unless the name says otherwise."""

    noise_mib: tuple[float, float] = (1.0, 6.0)
    warmup_tau: tuple[float, float] = (2.0, 20.0)  # time constant; the rise lasts ~3x that
    gap_minutes: tuple[float, float] = (2.0, 20.0)
    saw_period_s: tuple[float, float] = (30.0, 180.0)
    saw_amp: tuple[float, float] = (0.02, 0.12)  # of the level
    cache_fill: tuple[float, float] = (15.0, 120.0)  # time to (nearly) full
    cache_bound: tuple[float, float] = (0.2, 1.2)  # of the level
    alloc_steps: tuple[int, int] = (2, 5)
    alloc_ratio: tuple[float, float] = (2.0, 4.0)  # growth of the spacing between steps
    alloc_first: tuple[float, float] = (1.0, 15.0)  # first step after the warm-up
    burst_per_day: tuple[float, float] = (2.0, 6.0)
    burst_hold: tuple[float, float] = (1.0, 12.0)
    burst_rise: tuple[float, float] = (0.5, 10.0)  # the load ramps up over minutes
    burst_height: tuple[float, float] = (0.1, 0.5)  # of the level
    chunk_mib: tuple[float, float] = (1.0, 3.0)  # retained per leaking request
    daily_swing: tuple[float, float] = (0.0, 0.5)  # request-rate amplitude of the day cycle
    pre_leak_h: tuple[float, float] = (0.5, 8.0)
    slow_days: tuple[float, float] = (1.0, 4.0)


TUNE = Ranges()
TEST = replace(
    TUNE,
    noise_mib=(1.0, 10.0),
    warmup_tau=(3.0, 30.0),
    gap_minutes=(2.0, 30.0),
    saw_period_s=(45.0, 300.0),
    saw_amp=(0.03, 0.15),
    cache_fill=(24.0, 180.0),
    cache_bound=(0.3, 1.5),
    alloc_steps=(3, 7),
    alloc_ratio=(1.6, 3.2),
    alloc_first=(2.0, 30.0),
    burst_per_day=(3.0, 10.0),
    burst_hold=(1.0, 15.0),
    burst_rise=(0.5, 12.0),
    burst_height=(0.1, 0.6),
    chunk_mib=(0.5, 4.0),
    daily_swing=(0.0, 0.8),
    pre_leak_h=(0.5, 12.0),
    slow_days=(1.5, 5.0),
)
SPLITS = {"tune": (1, TUNE), "test": (2, TEST)}

# Out-of-distribution ranges, the same in both splits.
OOD_SAW_PERIOD_S = (300.0, 1200.0)
OOD_CACHE_FILL = (210.0, 270.0)
OOD_BURST_HOLD = (15.0, 40.0)

#: family -> (kind, traces per split at scale 1, how many of them are OOD)
FAMILIES: dict[str, tuple[str, int, int]] = {
    "warmup": ("quiet", 24, 0),
    "warmup_restart": ("quiet", 24, 0),
    "sawtooth": ("quiet", 32, 8),
    "cache": ("quiet", 32, 8),
    "allocator": ("quiet", 28, 0),
    "burst": ("quiet", 32, 8),
    "steady": ("quiet", 16, 0),
    "mixed": ("quiet", 24, 0),
    "linear": ("leak", 24, 0),
    "staircase": ("leak", 28, 0),
    "slow": ("leak", 20, 0),
    "sawtooth_leak": ("leak", 24, 0),
    "allocator_leak": ("leak", 24, 0),
}


def generate(seed: int = 0, split: str = "tune", scale: float = 1.0) -> list[Trace]:
    """Every family's traces for one split; the same (seed, split, scale) gives the same traces."""
    split_id, ranges = SPLITS[split]
    out = []
    for family_id, (family, (kind, count, ood_count)) in enumerate(FAMILIES.items()):
        n = max(1, round(count * scale))
        n_ood = min(n - 1, round(ood_count * scale)) if ood_count else 0
        for i in range(n):
            rng = np.random.default_rng([seed, split_id, family_id, i])
            ood = i >= n - n_ood
            make = _make_leak if kind == "leak" else _make_quiet
            trace = make(rng, family, ranges, ood)
            suffix = "-ood" if ood else ""
            out.append(replace(trace, name=f"{split}/{family}/{i:03d}{suffix}"))
    return out


# --- building blocks -----------------------------------------------------------------------


def _uniform(rng, bounds) -> float:
    return float(rng.uniform(*bounds))


def _log_uniform(rng, bounds) -> float:
    return float(math.exp(rng.uniform(math.log(bounds[0]), math.log(bounds[1]))))


def _interval(rng, duration: float, choices=(1.0, 2.0, 5.0, 10.0, 15.0)) -> float:
    wanted = max(float(rng.choice(choices)), duration / MAX_SAMPLES)
    return next(dt for dt in NICE_INTERVALS if dt >= wanted)


def _times(rng, duration: float, dt: float) -> np.ndarray:
    n = int(duration // dt) + 1
    t = np.arange(n) * dt
    t[1:] += rng.uniform(-0.05, 0.05, n - 1) * dt  # scrape jitter; keeps the order
    return t


def _noise(rng, t: np.ndarray, sigma: float) -> np.ndarray:
    """White noise plus exponentially correlated noise (allocator churn), std ``sigma``."""
    dt = float(np.median(np.diff(t))) if len(t) > 1 else 1.0
    tau = rng.uniform(5.0, 120.0)
    kernel = np.exp(-np.arange(max(1, int(5 * tau / dt))) * dt / tau)
    kernel /= math.sqrt(float(np.sum(kernel**2)))
    slow = np.convolve(rng.standard_normal(len(t) + len(kernel)), kernel, "valid")[: len(t)]
    w = rng.uniform(0.2, 0.8)
    return sigma * (w * rng.standard_normal(len(t)) + math.sqrt(1 - w * w) * slow)


def _run_index(t: np.ndarray, starts) -> np.ndarray:
    return np.searchsorted(np.asarray(starts), t, side="right") - 1


def _warmup(rng, t, starts, floor, level, ranges) -> np.ndarray:
    """Each (re)start rises from ``floor`` to ``level``: exponential or log-like (a fast start,
    a long tail, full after ~3 time constants)."""
    out = np.empty_like(t)
    run = _run_index(t, starts)
    for k, s in enumerate(starts):
        sel = run == k
        u = t[sel] - s
        tau = _log_uniform(rng, ranges.warmup_tau) * MINUTE
        if rng.random() < 0.5:
            shape = 1.0 - np.exp(-u / tau)
        else:
            shape = np.minimum(1.0, np.log1p(u / (tau / 10)) / math.log1p(30.0))
        out[sel] = floor + (level - floor) * shape
    return out


def _sawtooth(rng, t, period: float, amp: float) -> np.ndarray:
    """GC cycles: memory climbs for one (jittered) period, then a collection drops it back."""
    span = float(t[-1] - t[0]) + 2 * period
    n = int(span / (0.7 * period)) + 3
    lengths = period * rng.uniform(0.7, 1.3, n)
    edges = t[0] - rng.uniform(0, period) + np.concatenate(([0.0], np.cumsum(lengths)))
    heights = amp * rng.uniform(0.7, 1.0, n)
    k = np.searchsorted(edges, t, side="right") - 1
    return heights[k] * (t - edges[k]) / lengths[k]


def _cache(rng, t, starts, bound: float, fill: float) -> np.ndarray:
    """A cache filling to ``bound`` after each (re)start: saturating exponential (95 % at
    ``fill``) or sublinear and exactly full at ``fill`` (an LRU whose hit rate rises)."""
    out = np.zeros_like(t)
    run = _run_index(t, starts)
    for k, s in enumerate(starts):
        sel = run == k
        u = np.clip(t[sel] - s - rng.uniform(0, 30) * MINUTE, 0, None)
        if rng.random() < 0.5:
            out[sel] = bound * (1.0 - np.exp(-3.0 * u / fill))
        else:
            out[sel] = bound * np.minimum(1.0, u / fill) ** rng.uniform(0.4, 0.8)
    return out


def _allocator(rng, t, starts, total: float, ranges) -> np.ndarray:
    """Reserved memory ratcheting up when a new peak batch arrives: steps whose spacing grows
    geometrically (records of a random sequence get rarer), sizes shrinking, 2 MiB-quantised."""
    out = np.zeros_like(t)
    run = _run_index(t, starts)
    for k, s in enumerate(starts):
        sel = run == k
        n = int(rng.integers(ranges.alloc_steps[0], ranges.alloc_steps[1] + 1))
        ratio = _uniform(rng, ranges.alloc_ratio)
        gaps = _uniform(rng, ranges.alloc_first) * MINUTE * ratio ** np.arange(n)
        at = s + np.cumsum(gaps * rng.uniform(0.7, 1.3, n))
        sizes = rng.uniform(0.3, 1.0, n) * 0.7 ** np.arange(n)
        sizes = np.maximum(1, np.round(total * sizes / sizes.sum() / (2 * MiB))) * 2 * MiB
        out[sel] = np.sum(sizes * (t[sel, None] >= at), axis=1)
    return out


def _bursts(rng, t, starts, level: float, hold_range, ranges) -> np.ndarray:
    """Load bursts: the load ramps up over minutes (0.5–10: users arrive, a batch job's
    workers start one by one), holds, and goes down over 1–5 min; memory follows the load, so
    while it is up the working set also wobbles with the requests in flight. A burst higher
    than any before it in this process maps new memory and leaves a residue (fragmentation,
    its high-water mark)."""
    out = np.zeros_like(t)
    span = float(t[-1] - t[0])
    n = rng.poisson(_uniform(rng, ranges.burst_per_day) * span / DAY)
    peak = dict.fromkeys(range(len(starts)), 0.0)
    for at in np.sort(rng.uniform(t[0], t[-1], n)):
        run = int(_run_index(np.array([at]), starts)[0])
        height = level * _uniform(rng, ranges.burst_height)
        residue = max(0.0, height - peak[run]) * rng.uniform(0.02, 0.1)
        peak[run] = max(peak[run], height)
        rise, hold, fall = (
            _log_uniform(rng, ranges.burst_rise) * MINUTE,
            _uniform(rng, hold_range) * MINUTE,
            rng.uniform(1.0, 5.0) * MINUTE,
        )
        end = starts[run + 1] if run + 1 < len(starts) else math.inf
        knots = at + np.array([0.0, rise, rise + hold, rise + hold + fall])
        shape = np.interp(t, knots, [0.0, height, height, residue], left=0.0, right=residue)
        # Requests in flight come and go: the loaded part wobbles by a few percent of itself.
        loaded = np.clip(shape - residue, 0.0, None)
        wobble = _noise(rng, t, 1.0) * rng.uniform(0.01, 0.04)
        out += np.where(t < end, shape + loaded * wobble, 0.0)
    return out


def _restarts(rng, duration: float, n: int) -> tuple[float, ...]:
    """``n`` restarts at least an hour apart and from the ends (fewer if they do not fit)."""
    chosen: list[float] = []
    for _ in range(20 * n):
        if len(chosen) == n:
            break
        at = float(rng.uniform(HOUR, duration - HOUR))
        if all(abs(at - c) >= HOUR for c in chosen):
            chosen.append(at)
    return (0.0, *sorted(chosen))


def _drop(t: np.ndarray, windows) -> np.ndarray:
    """Indices of samples outside every (start, end) window."""
    keep = np.ones(len(t), dtype=bool)
    for a, b in windows:
        keep &= (t < a) | (t >= b)
    return np.flatnonzero(keep)


def _gaps(rng, t_end: float, ranges, max_gaps: int) -> list[tuple[float, float]]:
    n = int(rng.integers(1, max_gaps + 1))
    out = []
    for _ in range(n):
        length = _uniform(rng, ranges.gap_minutes) * MINUTE
        at = rng.uniform(0.05 * t_end, max(0.05 * t_end, t_end - length))
        out.append((at, at + length))
    return out


def _limit_for(rng, peak: float) -> float:
    """A container limit a person would set: 1.25–2.5x the peak, in 0.5 GiB, 2–16 GiB."""
    limit = math.ceil(peak * rng.uniform(1.25, 2.5) / (GiB / 2)) * GiB / 2
    limit = min(max(limit, 2 * GiB), 16 * GiB)
    return max(limit, math.ceil(peak * 1.15 / (GiB / 2)) * GiB / 2)


def _background(rng, family, t, starts, floor, level, ranges, ood) -> tuple[np.ndarray, bool]:
    """The family's quiet behaviour (without noise) and whether it is an allocator series."""
    v = _warmup(rng, t, starts, floor, level, ranges)
    parts = {
        "sawtooth": {"saw"},
        "cache": {"cache"},
        "allocator": {"alloc"},
        "burst": {"burst"},
        "sawtooth_leak": {"saw"},
        "allocator_leak": {"alloc"},
    }.get(family, set())
    if family == "mixed":
        parts = set(rng.choice(["saw", "cache", "burst", "alloc"], int(rng.integers(2, 4)), False))
    if family == "slow" and rng.random() < 0.5:
        parts = {"saw"}
    damp = 0.6 if family == "mixed" else 1.0  # keep the sum of several parts plausible
    if "saw" in parts:
        period = _log_uniform(rng, OOD_SAW_PERIOD_S if ood else ranges.saw_period_s)
        v = v + _sawtooth(rng, t, period, level * damp * _uniform(rng, ranges.saw_amp))
    if "cache" in parts:
        fill = _uniform(rng, OOD_CACHE_FILL if ood else ranges.cache_fill) * MINUTE
        v = v + _cache(rng, t, starts, level * damp * _uniform(rng, ranges.cache_bound), fill)
    if "alloc" in parts:
        v = v + _allocator(rng, t, starts, level * damp * rng.uniform(0.1, 0.6), ranges)
    if "burst" in parts:
        hold = OOD_BURST_HOLD if ood else ranges.burst_hold
        v = v + _bursts(rng, t, starts, level * damp, hold, ranges)
    return v, "alloc" in parts and family != "mixed"


def _levels(rng) -> tuple[float, float]:
    level = rng.uniform(1.0, 6.0) * GiB
    return level * rng.uniform(0.1, 0.4), level  # interpreter + imports, then the model


def _sigma(rng, ranges, allocator: bool) -> float:
    if allocator:  # reserved memory moves in whole blocks: no noise, or a little
        return 0.0 if rng.random() < 0.5 else rng.uniform(0.0, 0.5) * MiB
    return _uniform(rng, ranges.noise_mib) * MiB


# --- the two kinds of trace ----------------------------------------------------------------


def _make_quiet(rng, family: str, ranges: Ranges, ood: bool) -> Trace:
    duration = rng.uniform(6.0, 48.0) * HOUR
    t = _times(rng, duration, _interval(rng, duration))
    n_restarts = int(rng.integers(1, 5)) if family == "warmup_restart" else 0
    if family != "warmup_restart" and rng.random() < 0.15:
        n_restarts = 1
    starts = _restarts(rng, duration, n_restarts)
    floor, level = _levels(rng)
    clean, allocator = _background(rng, family, t, starts, floor, level, ranges, ood)
    if allocator:
        clean = np.ceil(clean / (2 * MiB)) * 2 * MiB
    values = clean + _noise(rng, t, _sigma(rng, ranges, allocator))
    # The process is down for a while at each restart: no samples just before it.
    windows = [(s - rng.uniform(5.0, 120.0), s) for s in starts[1:]]
    if rng.random() < 0.5:
        windows += _gaps(rng, duration, ranges, 3)
    keep = _drop(t, windows)
    limit = _limit_for(rng, float(np.max(values)))
    return Trace("", family, "quiet", ood, t[keep], values[keep], limit, starts=starts)


def _make_leak(rng, family: str, ranges: Ranges, ood: bool) -> Trace:
    if family == "slow":
        to_oom = _uniform(rng, ranges.slow_days) * DAY
    elif rng.random() < 0.1:
        to_oom = rng.uniform(20.0, 60.0) * MINUTE  # fast: outside the recall figure
    else:
        to_oom = _log_uniform(rng, (1.0, 48.0)) * HOUR
    t_leak = 0.0 if rng.random() < 0.15 else _uniform(rng, ranges.pre_leak_h) * HOUR
    duration = t_leak + 1.3 * to_oom  # room for the OOM to come late (noise, day cycle)
    choices = (15.0, 30.0, 60.0) if family == "slow" else (1.0, 2.0, 5.0, 10.0, 15.0)
    t = _times(rng, duration, _interval(rng, duration, choices))
    starts = (0.0,)
    if t_leak > 2 * HOUR and rng.random() < 0.2:  # a restart some time before the onset
        starts = (0.0, float(rng.uniform(0.3, 0.7)) * t_leak)
    floor, level = _levels(rng)
    background, allocator = _background(rng, family, t, starts, floor, level, ranges, ood)
    limit = _limit_for(rng, float(np.max(background)))
    headroom = limit - float(np.max(background[t >= t_leak]))

    # The leak's shape, scaled so that it eats the headroom by t_leak + to_oom.
    u = np.clip(t - t_leak, 0, None)
    staircase = family == "staircase" or (family == "slow" and rng.random() < 0.5)
    if staircase:
        # Requests arrive as a Poisson process whose rate follows the day; each keeps a chunk.
        chunk = _uniform(rng, ranges.chunk_mib) * MiB
        swing, phase = _uniform(rng, ranges.daily_swing), rng.uniform(0, 2 * math.pi)
        daily = 1.0 + swing * np.sin(2 * math.pi * t / DAY + phase)
        dt = np.diff(t, prepend=t[0])
        expected = np.cumsum(np.where(t > t_leak, daily * dt, 0.0))  # requests per unit rate
        at_oom = float(np.interp(t_leak + to_oom, t, expected))
        rate = headroom / chunk / at_oom  # requests per second (daily mean)
        leak = chunk * np.cumsum(rng.poisson(np.diff(expected, prepend=0.0) * rate))
    else:
        leak = headroom * u / to_oom
    if family == "allocator_leak":
        # Leaked tensors stay allocated, so reserved memory grows a segment at a time.
        segment = max(2 * MiB, round(headroom / rng.uniform(8, 40) / (2 * MiB)) * 2 * MiB)
        leak = np.ceil(leak / segment) * segment
    clean = background + leak
    if allocator:
        clean = np.ceil(clean / (2 * MiB)) * 2 * MiB
    values = clean + _noise(rng, t, _sigma(rng, ranges, allocator))

    over = np.flatnonzero((values >= limit) & (t >= t_leak))
    if len(over) == 0:  # the day cycle or the noise delayed it past the end: make it hit
        values[-1] = limit
        over = np.array([len(t) - 1])
    end = int(over[0])
    t_oom = float(t[end])
    windows = [(s - rng.uniform(5.0, 120.0), s) for s in starts[1:]]
    if rng.random() < 0.3:  # gaps, but not in the last 20 minutes: the OOM sample must stay
        windows += [
            (a, b) for a, b in _gaps(rng, t_oom - 20 * MINUTE, ranges, 2) if b < t_oom - MINUTE
        ]
    keep = _drop(t[: end + 1], windows)
    return Trace(
        "",
        family,
        "leak",
        ood,
        t[keep],
        values[keep],
        limit,
        t_leak=t_leak,
        t_oom=t_oom,
        starts=starts,
    )


def week_at_one_hertz(seed: int = 0) -> Trace:
    """The throughput yardstick of the issue: a week of 1 s samples (604,800) of a quiet
    service with a GC sawtooth; the sample cap above does not apply to it."""
    rng = np.random.default_rng([seed, 99])
    t = np.arange(7 * 86400, dtype=np.float64)
    floor, level = 0.3 * GiB, 3 * GiB
    values = _warmup(rng, t, (0.0,), floor, level, TUNE)
    values += _sawtooth(rng, t, 90.0, 0.05 * level) + _noise(rng, t, 3 * MiB)
    return Trace("week-1s", "sawtooth", "quiet", False, t, values, 8 * GiB)


# --- real traces ---------------------------------------------------------------------------


def load_real(directory: Path = REAL_DIR) -> list[Trace]:
    """The recorded traces: ``NAME.csv`` (``t,value``: seconds, bytes) and ``NAME.json``."""
    out = []
    for sidecar in sorted(directory.glob("*.json")):
        meta = json.loads(sidecar.read_text())
        with open(sidecar.with_suffix(".csv"), newline="") as f:
            rows = [(float(r["t"]), float(r["value"])) for r in csv.DictReader(f)]
        times, values = (np.array(column) for column in zip(*rows, strict=True))
        out.append(recorded_trace("real", meta, times, values))
    return out


def recorded_trace(
    prefix: str,
    meta: dict,
    times: np.ndarray,
    values: np.ndarray,
    requests: np.ndarray | None = None,
) -> Trace:
    """A recording's trace from its sidecar ``meta`` (name, family, kind, limit, t_leak,
    t_oom, starts) and its columns, named ``prefix/name``."""
    return Trace(
        f"{prefix}/{meta['name']}",
        meta["family"],
        meta["kind"],
        False,
        times,
        values,
        float(meta["limit"]),
        t_leak=meta.get("t_leak"),
        t_oom=meta.get("t_oom"),
        starts=tuple(meta.get("starts", [float(times[0])])),
        source="real",
        requests=requests,
    )
