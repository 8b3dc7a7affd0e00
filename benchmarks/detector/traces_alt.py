"""A second synthetic memory-trace corpus ("alt"), written apart from ``traces`` and the detector.

``generate(seed, quick)`` returns seeded ``Trace`` objects (source ``"alt"``, names
``alt/<family>/<i>``). It exists so the growth detector can be judged on data it was never tuned
on: every model here is drawn from how real services behave, not from the first generator.

How a trace is made. A *load model* gives the request rate over time (a daily cycle with a second
harmonic, load bursts with smooth ramps, a log-normal mean-reverting wobble); the cumulative
``requests`` counter is a Poisson count of its integral, so it is consistent with every part of
the memory model that follows load. A *memory model* sums parts that each restart resets: a
warm-up (exponential, log-like, staged loading or sigmoid, often with a slow lazy tail),
load-following memory with a fragmentation high-water residue, GC/arena sawtooths, a cache warming
to its bound, a caching-allocator reserve quantised to segments, regime steps of the working set
and mean-reverting drift. Noise is Student-t (heavy-tailed) plus rare one-sample spikes, and the
values are quantised to 4 KiB pages or 2 MiB segments. Sampling is every 1–60 s, regular,
jittered or Poisson-like (irregular), with gaps of 2–60 min and the samples lost while a process
restarts; at most 20 000 samples a trace. Levels are 200 MiB–40 GiB. Limits are cgroup-like
round numbers (binary 1/1.25/1.5/1.75 × 2^k MiB or decimal "2G"-style values). ``quick=True``
keeps the first eighth (at least one) of every family: the same traces as the full corpus.

Quiet families (4–48 h; the peak at most 89 % of the limit; a third sized tight, the peak at
75–89 % of the limit before rounding up to a round number, the rest with a limit 1.2–4× the working
level or just enough for the peak):
  burst      bursts ramp up over 1–10 min, hold 15–40 min (30 %: 2–10 min), fall over 2–20 min,
             1.5–4× the load; a burst beating every earlier one leaves 15–60 % of its excess
  ratchet    caching allocator: the reserve is the running peak of batch demand (4–9 buckets,
             top ones rare), rounded up to 2 or 20 MiB segments; fragmentation steps at
             geometrically growing spacing; sometimes an empty-cache release and a new ratchet
  sawtooth   GC/arena sawtooth, period 20 s–15 min, 3–25 % of the level, rise 75–97 % of the
             cycle, period and amplitude jittered per cycle
  cache      a cache filling to a bound of 10–150 % of the level in 1–6 h (half of them 3–6 h):
             saturating, sublinear, logistic or driven by the requests served
  warmup     warm-ups after 0–3 crash/deploy restarts, often with a lazy tail of 20–90 min
  recycle    worker recycling: a restart after a max-requests count (1–8 h of traffic, jittered)
             or on a timer, each followed by a new warm-up (and in half a cache fill)
  daily      a daily traffic cycle (amplitude 30–80 %) that load-following memory tracks
  regime     request-size regimes: the working set steps up and down by 8–35 % every 1–8 h
  drift      mean-reverting random-walk drift of 2–6 % (time constant 0.5–4 h), heavy tails
  combo      two to four of the above together
Leaking families (a leak-free prefix of 0–12 h, a quarter from the start; the trace ends at the
first sample at or over the limit; ~85 % take 1 h–2 days from onset to OOM, the rest 20–60 min;
the limit puts the leak-free peak at 50–87 % of it, and the leak's size is solved by bisection so
that the OOM lands at the drawn onset-to-OOM time or, through noise and sawtooth peaks, just
before):
  leak_linear       a constant rate on top of a warm-up, load and noise
  leak_request      per-request retention: growth follows the (varying) request rate
  leak_sawtooth     a leak under a GC/arena sawtooth, so the peaks reach the limit
  leak_quantised    a leak inside a caching allocator whose segments are 4–15 % of the level:
                    visible only as segment steps
  leak_after_burst  2–12 h of bursts (with residues) before the leak starts
  leak_slow         24–46 h from onset to OOM
  leak_rate_change  accelerating or decelerating leaks (power, two-rate, log, exponential)
  leak_combo        a leak, possibly in chunks, on top of a combined quiet workload
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from benchmarks.detector.traces import Trace

KiB = 1024.0
MiB = 1024.0 * KiB
GiB = 1024.0 * MiB
MINUTE = 60.0
HOUR = 3600.0
DAY = 86400.0

#: Most samples a trace has; long traces sample coarser.
MAX_SAMPLES = 20_000
INTERVALS = (1.0, 2.0, 3.0, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0)
#: Onset-to-OOM bands: the long band holds ~85 % of the leaks, the short band the rest.
LONG_BAND = (1.0 * HOUR, 48.0 * HOUR)
SHORT_BAND = (20.0 * MINUTE, 60.0 * MINUTE)
SHORT_FRACTION = 0.15
QUIET_MAX_FILL = 0.90  # a quiet trace's peak stays at or below this share of its limit

QUIET_FAMILIES: dict[str, int] = {
    "burst": 7,
    "ratchet": 6,
    "sawtooth": 6,
    "cache": 7,
    "warmup": 5,
    "recycle": 6,
    "daily": 6,
    "regime": 6,
    "drift": 5,
    "combo": 10,
}
LEAK_FAMILIES: dict[str, int] = {
    "leak_linear": 9,
    "leak_request": 9,
    "leak_sawtooth": 9,
    "leak_quantised": 9,
    "leak_after_burst": 9,
    "leak_slow": 9,
    "leak_rate_change": 9,
    "leak_combo": 9,
}
QUICK_SHARE = 1 / 8  # quick=True keeps the first eighth (at least one) of every family


# ---------------------------------------------------------------------------------------------
# small helpers


def _lu(rng: np.random.Generator, lo: float, hi: float) -> float:
    """Log-uniform draw."""
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return np.asarray(x * x * (3.0 - 2.0 * x), dtype=float)


def _nice_limits() -> tuple[np.ndarray, np.ndarray]:
    binary = sorted({m * 2.0**e * MiB for e in range(7, 19) for m in (1.0, 1.25, 1.5, 1.75)})
    decimal = sorted(
        {
            m * 10.0**k * 1e6
            for k in range(2, 6)
            for m in (1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0)
        }
    )
    return np.array(binary), np.array(decimal)


_BINARY_LIMITS, _DECIMAL_LIMITS = _nice_limits()


def _nice_ceil(x: float, decimal: bool) -> float:
    table = _DECIMAL_LIMITS if decimal else _BINARY_LIMITS
    i = int(np.searchsorted(table, x, side="left"))
    if i >= len(table):
        return float(math.ceil(x / GiB) * GiB)
    return float(table[i])


def _ou(rng: np.random.Generator, times: np.ndarray, tau: float, sd: float) -> np.ndarray:
    """Mean-reverting (Ornstein-Uhlenbeck) drift with stationary sd, on a coarse grid."""
    if sd <= 0.0 or len(times) == 0:
        return np.zeros(len(times))
    t0, t1 = float(times[0]), float(times[-1])
    step = max(min(tau / 6.0, (t1 - t0) / 3000.0), 1.0)
    grid = np.arange(t0, t1 + 2 * step, step)
    a = math.exp(-step / tau)
    kick = rng.standard_normal(len(grid)) * sd * math.sqrt(1.0 - a * a)
    x = np.empty(len(grid))
    v = float(rng.standard_normal() * sd)
    for i, k in enumerate(kick.tolist()):
        v = v * a + k
        x[i] = v
    return np.asarray(np.interp(times, grid, x), dtype=float)


def _seg_cummax(x: np.ndarray, seg: np.ndarray) -> np.ndarray:
    """Running maximum that restarts wherever ``seg`` (non-decreasing) changes."""
    out = np.empty_like(x)
    cuts = np.flatnonzero(np.diff(seg)) + 1
    lo = 0
    for hi in [*cuts.tolist(), len(x)]:
        out[lo:hi] = np.maximum.accumulate(x[lo:hi])
        lo = hi
    return out


# ---------------------------------------------------------------------------------------------
# sampling


def _sample_times(
    rng: np.random.Generator, horizon: float, protect: tuple[float, float] | None
) -> np.ndarray:
    """Sample times in [0, horizon]: regular, jittered or Poisson-like, with gaps cut out.

    ``protect`` is a span no gap may touch (the end of a leak trace)."""
    dt_min = horizon / MAX_SAMPLES
    choices = [d for d in INTERVALS if d >= dt_min] or [INTERVALS[-1]]
    dt = float(rng.choice(choices))
    mode = rng.choice(3, p=[0.35, 0.4, 0.25])
    n = int(horizon / dt * 1.3) + 16
    if mode == 0:  # regular scrapes
        steps = np.full(n, dt)
    elif mode == 1:  # jittered, with the odd late scrape
        j = _u(rng, 0.05, 0.3)
        steps = dt * (1.0 + rng.uniform(-j, j, n))
        late = rng.random(n) < 0.01
        steps[late] += rng.uniform(0.0, 2.0 * dt, int(late.sum()))
    else:  # irregular: exponential intervals with a floor
        steps = dt * (0.15 + 0.85 * rng.exponential(1.0, n))
    times = np.concatenate([[0.0], np.cumsum(steps)])
    times = np.round(times[times <= horizon], 3)
    end = round(horizon, 3)
    if protect is not None and times[-1] < end:
        times = np.append(times, end)
    n_gaps = min(int(rng.poisson(horizon / HOUR * _u(rng, 0.0, 0.15))), 5)
    keep = np.ones(len(times), dtype=bool)
    for _ in range(n_gaps):
        length = _lu(rng, 2 * MINUTE, HOUR)
        start = _u(rng, 0.02 * horizon, 0.95 * horizon)
        end = start + length
        if protect is not None and end > protect[0] and start < protect[1]:
            continue
        keep &= ~((times > start) & (times < end))
    keep[0] = True
    times = times[keep]
    assert np.all(np.diff(times) > 0)
    return times


# ---------------------------------------------------------------------------------------------
# load


@dataclass
class _Bursts:
    rate_per_hour: float = 0.0
    long_fraction: float = 0.7
    mult: tuple[float, float] = (1.5, 4.0)


@dataclass
class _LoadCfg:
    base_rate: float = 20.0  # requests/s at the reference load
    daily_amp: float = 0.0
    bursts: _Bursts = field(default_factory=_Bursts)
    wobble_sd: float = 0.1  # log-normal OU on the rate
    wobble_tau: float = 10 * MINUTE


@dataclass
class _Load:
    rel: np.ndarray  # rate / base_rate at the samples
    expected: np.ndarray  # expected cumulative requests at the samples
    requests: np.ndarray  # the Poisson counter at the samples
    grid: np.ndarray
    grid_expected: np.ndarray
    base_rate: float


def _burst_factor(rng: np.random.Generator, grid: np.ndarray, cfg: _Bursts) -> np.ndarray:
    horizon = float(grid[-1])
    factor = np.ones(len(grid))
    if cfg.rate_per_hour <= 0.0:
        return factor
    t = rng.exponential(HOUR / cfg.rate_per_hour) * 0.5
    while t < horizon:
        up = _lu(rng, 1 * MINUTE, 10 * MINUTE)
        hold = (
            _u(rng, 15 * MINUTE, 40 * MINUTE)
            if rng.random() < cfg.long_fraction
            else _u(rng, 2 * MINUTE, 10 * MINUTE)
        )
        down = _lu(rng, 2 * MINUTE, 20 * MINUTE)
        mult = _lu(rng, *cfg.mult)
        x = np.interp(grid, [t, t + up, t + up + hold, t + up + hold + down], [0, 1, 1, 0])
        factor += (mult - 1.0) * _smoothstep(x)
        t += up + hold + down + rng.exponential(HOUR / cfg.rate_per_hour)
    return factor


def _make_load(rng: np.random.Generator, times: np.ndarray, cfg: _LoadCfg) -> _Load:
    horizon = float(times[-1])
    step = max(5.0, horizon / 20_000)
    grid = np.arange(0.0, horizon + 2 * step, step)
    rel = np.ones(len(grid))
    if cfg.daily_amp > 0.0:
        phase = _u(rng, 0.0, DAY)
        w = 2 * math.pi * (grid + phase) / DAY
        rel *= 1.0 + cfg.daily_amp * (np.cos(w) + 0.25 * np.cos(2 * w + _u(rng, 0, 6.28)))
        rel = np.maximum(rel, 0.05)
    rel *= _burst_factor(rng, grid, cfg.bursts)
    if cfg.wobble_sd > 0.0:
        sd = cfg.wobble_sd
        rel *= np.exp(_ou(rng, grid, cfg.wobble_tau, sd) - 0.5 * sd * sd)
    rate = cfg.base_rate * rel
    grid_expected = np.concatenate([[0.0], np.cumsum(0.5 * (rate[1:] + rate[:-1]) * step)])
    expected = np.interp(times, grid, grid_expected)
    inc = rng.poisson(np.maximum(np.diff(expected), 0.0))
    requests = np.concatenate([[0.0], np.cumsum(inc)]).astype(float)
    return _Load(
        np.interp(times, grid, rel), expected, requests, grid, grid_expected, cfg.base_rate
    )


# ---------------------------------------------------------------------------------------------
# memory parts


def _warmup_shape(rng: np.random.Generator, s: np.ndarray) -> np.ndarray:
    """0 -> 1 after a (re)start; s is the time since the start."""
    kind = rng.choice(4)
    tau = _lu(rng, 0.5 * MINUTE, 15 * MINUTE)
    if kind == 0:
        return 1.0 - np.exp(-s / tau)
    if kind == 1:
        full = tau * _u(rng, 3.0, 8.0)
        return np.clip(np.log1p(s / tau) / math.log1p(full / tau), 0.0, 1.0)
    if kind == 2:  # staged loading (weights, shards, indexes)
        n = int(rng.integers(2, 7))
        at = np.sort(rng.uniform(0.0, 4.0 * tau, n))
        w = rng.dirichlet(np.ones(n))
        g = np.zeros(len(s))
        for a, wi in zip(at.tolist(), w.tolist(), strict=True):
            g += wi * np.clip((s - a) / _u(rng, 5.0, 40.0), 0.0, 1.0)
        return g
    mid = 2.0 * tau
    lo = 1.0 / (1.0 + math.exp(mid / (0.5 * tau)))
    return np.clip((1.0 / (1.0 + np.exp(-(s - mid) / (0.5 * tau))) - lo) / (1.0 - lo), 0.0, 1.0)


def _sawtooth(
    rng: np.random.Generator,
    times: np.ndarray,
    period: float,
    amp: float,
) -> np.ndarray:
    """Asymmetric GC/arena sawtooth: slow build-up, fast collection, jittered per cycle."""
    rho = _u(rng, 0.75, 0.97)
    q = _u(rng, 0.6, 1.6)
    pjit = _u(rng, 0.05, 0.3)
    ajit = _u(rng, 0.05, 0.35)
    horizon = float(times[-1]) + period
    n = int(horizon / period * 1.6) + 8
    lens = period * np.exp(rng.normal(0.0, pjit, n))
    while lens.sum() < horizon + period:
        lens = np.concatenate([lens, period * np.exp(rng.normal(0.0, pjit, n))])
    bounds = np.concatenate([[-_u(rng, 0.0, period)], np.cumsum(lens)])
    bounds[1:] += bounds[0]
    amps = amp * np.exp(rng.normal(0.0, ajit, len(lens)))
    floors = amp * 0.08 * rng.standard_normal(len(lens))
    k = np.searchsorted(bounds, times, side="right") - 1
    ph = np.clip((times - bounds[k]) / lens[k], 0.0, 1.0)
    shape = np.where(ph < rho, (ph / rho) ** q, (1.0 - ph) / (1.0 - rho))
    return np.asarray(amps[k] * shape + floors[k], dtype=float)


def _cache_fill(
    rng: np.random.Generator,
    s: np.ndarray,
    served: np.ndarray | None,
    fill_time: float,
    base_rate: float,
) -> np.ndarray:
    """0 -> 1 as an LRU cache warms to its bound; ``fill_time`` is when it is ~95 % full."""
    kinds = ["saturating", "sublinear", "logistic"] + (["requests"] if served is not None else [])
    kind = kinds[int(rng.integers(len(kinds)))]
    if kind == "saturating":
        return 1.0 - np.exp(-3.0 * s / fill_time)
    if kind == "sublinear":
        return np.minimum(1.0, (s / fill_time) ** _u(rng, 0.4, 0.8))
    if kind == "logistic":
        mid, width = 0.55 * fill_time, fill_time / _u(rng, 8.0, 12.0)
        lo = 1.0 / (1.0 + math.exp(mid / width))
        return np.clip((1.0 / (1.0 + np.exp(-(s - mid) / width)) - lo) / (1.0 - lo), 0.0, 1.0)
    assert served is not None
    return 1.0 - np.exp(-3.0 * served / (base_rate * fill_time))


def _regime(rng: np.random.Generator, times: np.ndarray, every: float, amp: float) -> np.ndarray:
    """Working-set regimes (request-size mix): steps up and down, ramped over minutes."""
    horizon = float(times[-1])
    kt, kv = [0.0], [0.0]
    t, v = 0.0, 0.0
    while True:
        t += rng.exponential(every)
        if t >= horizon:
            break
        ramp = _lu(rng, 1 * MINUTE, 20 * MINUTE)
        new = amp * _u(rng, -1.0, 1.0)
        kt += [t, t + ramp]
        kv += [v, new]
        v = new
        t += ramp
    return np.asarray(np.interp(times, kt, kv), dtype=float)


@dataclass
class _Ratchet:
    demand: np.ndarray  # per-sample peak batch demand, bytes
    seg: float  # allocator segment
    epoch: np.ndarray  # ratchet epochs: restarts and empty-cache releases
    extra: np.ndarray  # fragmentation segments reserved on top


def _ratchet(
    rng: np.random.Generator,
    times: np.ndarray,
    seg_idx: np.ndarray,
    span: float,
    seg: float,
    *,
    frag: bool,
    release: bool,
) -> _Ratchet:
    """A caching allocator's batch demand: bucketed shapes, big ones rare."""
    m = int(rng.integers(4, 10))
    rho = _u(rng, 0.08, 0.35)
    probs = rho ** np.arange(m)
    cdf = np.cumsum(probs / probs.sum())
    cdf[-1] = 1.0
    if rng.random() < 0.5:
        sizes = span * 2.0 ** (np.arange(m) - (m - 1))
    else:
        sizes = span * (np.arange(m) + 1) / m
    batch_rate = _lu(rng, 0.01, 0.5)
    dts = np.diff(times, prepend=times[0] - 1.0)
    k = np.maximum(rng.poisson(dts * batch_rate), 1)
    thr = rng.random(len(times)) ** (1.0 / k)
    j = np.minimum(np.searchsorted(cdf, thr, side="left"), m - 1)
    demand = sizes[j]
    epoch = seg_idx.astype(float).copy()
    if release:
        for t_rel in np.sort(rng.uniform(0.2, 0.9, int(rng.integers(1, 3))) * times[-1]):
            epoch += 1000.0 * (times >= t_rel)
    extra = np.zeros(len(times))
    if frag:  # fragmentation: now and then a block more, at geometrically growing spacing
        chunk = math.ceil(span * _u(rng, 0.01, 0.05) / seg) * seg
        t = _lu(rng, 5 * MINUTE, 40 * MINUTE)
        g = _u(rng, 2.0, 4.0)
        for _ in range(6):
            if t >= times[-1]:
                break
            extra += chunk * int(rng.integers(1, 4)) * (times >= t)
            t *= g
    return _Ratchet(demand, seg, epoch, extra)


def _reserve(demand: np.ndarray, r: _Ratchet) -> np.ndarray:
    peak = _seg_cummax(demand, r.epoch)
    return np.asarray(np.ceil(peak / r.seg) * r.seg + r.extra, dtype=float)


# ---------------------------------------------------------------------------------------------
# one workload


@dataclass
class _Cfg:
    """What a workload is made of; None/0 switches a part off."""

    level: float
    hours: float  # quiet: the trace length; leak: unused
    requests: bool = True
    load: _LoadCfg = field(default_factory=_LoadCfg)
    load_frac: float = 0.1  # load-following memory at the reference load, of the level
    residue: float = 0.0  # share of a new peak's excess kept (fragmentation high water)
    saw: tuple[float, float] | None = None  # (period s, amplitude of the level)
    cache: tuple[float, float] | None = None  # (bound of the level, fill time s)
    ratchet: tuple[float, float] | None = None  # (span of the level, segment bytes)
    ratchet_frag: bool = False
    ratchet_release: bool = False
    regime: tuple[float, float] | None = None  # (mean spacing s, amplitude of the level)
    drift: tuple[float, float] = (HOUR, 0.005)  # (tau s, sd of the level)
    restarts: str | None = None  # "recycle", "timer", "crash"
    restart_every: float = 4 * HOUR
    attached_late: bool = False  # the agent attached to an already warm process
    noise_rel: float = 0.001
    noise_abs: float = 1 * MiB
    noise_df: float = 4.0
    spikes_per_hour: float = 0.0
    spike_mag: float = 0.1
    quantum: float = 4 * KiB
    tail: bool = False  # a slow lazy tail after the warm-up


@dataclass
class _Leak:
    onset: float
    target: float  # onset + the intended onset-to-OOM time
    shape: str  # linear power piecewise log exp chunks request
    into_ratchet: bool = False


@dataclass
class _Model:
    times: np.ndarray
    starts: tuple[float, ...]
    requests: np.ndarray | None
    base: np.ndarray  # leak-free memory, noise and spikes included, before quantisation
    ratchet: _Ratchet | None
    leak: np.ndarray | None  # leak shape: 0 before onset, 1 at the last sample
    into_ratchet: bool
    quantum: float

    def render(self, amount: float = 0.0) -> np.ndarray:
        v = self.base.copy()
        if self.ratchet is not None:
            demand = self.ratchet.demand
            if self.into_ratchet and self.leak is not None:
                demand = demand + amount * self.leak
            v += _reserve(demand, self.ratchet)
        if self.leak is not None and not self.into_ratchet:
            v += amount * self.leak
        v = np.floor(v / self.quantum) * self.quantum
        return np.asarray(np.maximum(v, 16 * MiB), dtype=float)


def _restart_times(
    rng: np.random.Generator, cfg: _Cfg, load: _Load | None, until: float
) -> list[float]:
    out: list[float] = []
    if cfg.restarts is None or until <= 30 * MINUTE:
        return out
    if cfg.restarts == "crash":
        n = int(rng.integers(1, 4))
        return sorted(rng.uniform(0.1, 0.95, n) * until)
    t = 0.0
    while True:
        if cfg.restarts == "recycle" and load is not None:
            per_hour = load.base_rate * HOUR
            max_req = per_hour * cfg.restart_every / HOUR * (1.0 + _u(rng, 0.0, 0.3))
            have = float(np.interp(t, load.grid, load.grid_expected))
            i = int(np.searchsorted(load.grid_expected, have + max_req))
            if i >= len(load.grid):
                break
            t = float(load.grid[i])
        else:
            t += cfg.restart_every * _u(rng, 0.8, 1.2)
        if t >= until:
            break
        out.append(round(t, 3))
    return out


def _build(rng: np.random.Generator, cfg: _Cfg, horizon: float, leak: _Leak | None) -> _Model:
    protect = (
        None
        if leak is None
        else (leak.target - max(10 * MINUTE, 0.3 * (leak.target - leak.onset)), leak.target + 1)
    )
    times = _sample_times(rng, horizon, protect)
    load = _make_load(rng, times, cfg.load)
    until = (horizon if leak is None else leak.onset) - 15 * MINUTE
    starts = [0.0, *_restart_times(rng, cfg, load if cfg.requests else None, until)]
    # a restarting process is not sampled for a few seconds
    keep = np.ones(len(times), dtype=bool)
    for st in starts[1:]:
        keep &= ~((times >= st) & (times < st + _u(rng, 2.0, 45.0)))
    keep[0] = True
    times = times[keep]
    load = _Load(
        load.rel[keep],
        load.expected[keep],
        load.requests[keep],
        load.grid,
        load.grid_expected,
        load.base_rate,
    )
    st_arr = np.array(starts)
    seg_idx = np.searchsorted(st_arr, times, side="right") - 1
    s = times - st_arr[seg_idx]
    if cfg.attached_late:  # first process already ran for a while before the trace
        s = s + np.where(seg_idx == 0, _lu(rng, HOUR, 48 * HOUR), 0.0)
    served = load.expected - np.interp(st_arr, times, load.expected)[seg_idx]
    if cfg.attached_late:
        served = served + np.where(seg_idx == 0, load.base_rate * 48 * HOUR, 0.0)
    served = np.maximum(served, 0.0)

    L = cfg.level
    base = np.zeros(len(times))
    # interpreter floor and warm-up of the static part
    floor = min(0.5 * L, _lu(rng, 60 * MiB, 400 * MiB) + L * _u(rng, 0.0, 0.1))
    shares = cfg.load_frac + (cfg.cache[0] if cfg.cache else 0.0)
    shares += (cfg.saw[1] / 2 if cfg.saw else 0.0) + (cfg.ratchet[0] * 0.5 if cfg.ratchet else 0.0)
    static = L * max(0.25, 1.0 - shares)
    warm = _warmup_shape(rng, s)
    base += floor + (static - floor) * warm
    if cfg.tail:
        base += L * _u(rng, 0.02, 0.08) * (1.0 - np.exp(-s / _lu(rng, 20 * MINUTE, 90 * MINUTE)))
    # load-following memory, with a fragmentation residue after record peaks
    ready = _smoothstep(s / _u(rng, 30.0, 180.0))
    lm = L * cfg.load_frac * load.rel * ready
    if cfg.residue > 0.0:
        ref = L * cfg.load_frac
        excess = lm - ref
        high = np.maximum(_seg_cummax(excess, seg_idx), 0.0)
        lm = ref * ready + np.maximum(excess, cfg.residue * high)
    base += lm
    if cfg.saw is not None:
        base += _sawtooth(rng, times, cfg.saw[0], L * cfg.saw[1]) * warm
    if cfg.cache is not None:
        fill = _cache_fill(rng, s, served if cfg.requests else None, cfg.cache[1], load.base_rate)
        base += L * cfg.cache[0] * fill
    if cfg.regime is not None:
        base += L * _regime(rng, times, cfg.regime[0], cfg.regime[1])
    base += L * _ou(rng, times, cfg.drift[0], cfg.drift[1])
    # noise: Student-t, heavy-tailed, clipped far out; plus single-sample spikes
    scale = cfg.noise_rel * L + cfg.noise_abs
    noise = np.clip(rng.standard_t(cfg.noise_df, len(times)), -40.0, 40.0) * scale
    n = len(times)
    if cfg.spikes_per_hour > 0.0:
        n_spikes = int(rng.poisson(cfg.spikes_per_hour * horizon / HOUR))
        at = rng.integers(1, n, n_spikes) if n > 1 else np.zeros(0, dtype=int)
        mag = L * cfg.spike_mag * np.exp(rng.normal(0.0, 0.5, n_spikes))
        mag *= np.where(rng.random(n_spikes) < 0.8, 1.0, -0.5)
        if leak is not None:  # no large spikes once the leak runs: its OOM is the leak's
            mag = np.where(times[at] >= leak.onset, np.minimum(mag, 0.02 * L), mag)
        noise[at] += mag
    base += noise

    ratchet = None
    if cfg.ratchet is not None:
        ratchet = _ratchet(
            rng,
            times,
            seg_idx,
            L * cfg.ratchet[0],
            cfg.ratchet[1],
            frag=cfg.ratchet_frag,
            release=cfg.ratchet_release,
        )

    shape = None
    if leak is not None:
        shape = _leak_shape(rng, leak, times, load.requests)
    return _Model(
        times=times,
        starts=tuple(starts),
        requests=load.requests if cfg.requests else None,
        base=base,
        ratchet=ratchet,
        leak=shape,
        into_ratchet=leak is not None and leak.into_ratchet,
        quantum=cfg.quantum,
    )


def _leak_shape(
    rng: np.random.Generator, leak: _Leak, times: np.ndarray, requests: np.ndarray
) -> np.ndarray:
    d = float(times[-1]) - leak.onset
    tau = np.clip(times - leak.onset, 0.0, None)
    x = tau / d
    kind = leak.shape
    if kind == "linear":
        f = x
    elif kind == "power":
        p = _u(rng, 0.6, 0.8) if rng.random() < 0.5 else _u(rng, 1.3, 1.7)
        f = x**p
    elif kind == "piecewise":
        cut = _u(rng, 0.3, 0.7)
        k = _u(rng, 0.4, 0.7) if rng.random() < 0.5 else _u(rng, 1.5, 2.5)
        f = np.where(x < cut, x, cut + k * (x - cut)) / (cut + k * (1.0 - cut))
    elif kind == "log":
        t0 = _u(rng, 0.3, 1.0)
        f = np.log1p(x / t0) / math.log1p(1.0 / t0)
    elif kind == "exp":
        k = _u(rng, 0.5, 1.5)
        f = np.expm1(k * x) / math.expm1(k)
    elif kind == "chunks":  # a leak per job run / per reload, in discrete chunks
        n = int(rng.integers(8, 40))
        at = np.sort(rng.uniform(0.0, 1.0, n))
        at[-1] = min(at[-1], 0.999)
        sizes = rng.uniform(0.5, 1.5, n)
        steps = np.searchsorted(at, x, side="right")
        cum = np.concatenate([[0.0], np.cumsum(sizes)])
        f = cum[steps] / cum[-1]
        f = np.where(x >= 1.0, 1.0, f)
    else:  # per-request retention
        r0 = float(np.interp(leak.onset, times, requests))
        f = np.clip(requests - r0, 0.0, None) / max(float(requests[-1]) - r0, 1.0)
    return np.where(times >= leak.onset, f, 0.0)


# ---------------------------------------------------------------------------------------------
# families


def _common(
    rng: np.random.Generator, level: tuple[float, float], hours: tuple[float, float]
) -> _Cfg:
    heavy = rng.random() < 0.5
    cfg = _Cfg(
        level=_lu(rng, *level),
        hours=_u(rng, *hours),
        load=_LoadCfg(
            base_rate=_lu(rng, 2.0, 500.0),
            daily_amp=_u(rng, 0.0, 0.3) if rng.random() < 0.5 else 0.0,
            wobble_sd=_u(rng, 0.03, 0.25),
            wobble_tau=_lu(rng, 2 * MINUTE, 30 * MINUTE),
        ),
        load_frac=_u(rng, 0.03, 0.15),
        drift=(_lu(rng, 10 * MINUTE, 3 * HOUR), _u(rng, 0.002, 0.012)),
        attached_late=rng.random() < 0.25,
        noise_rel=_lu(rng, 3e-4, 4e-3),
        noise_abs=_lu(rng, 0.3 * MiB, 4 * MiB),
        noise_df=_u(rng, 2.2, 3.5) if heavy else _u(rng, 3.5, 8.0),
        spikes_per_hour=_lu(rng, 0.02, 0.6) if rng.random() < 0.6 else 0.0,
        spike_mag=_lu(rng, 0.03, 0.3),
        quantum=2 * MiB if rng.random() < 0.25 else 4 * KiB,
        tail=rng.random() < 0.4,
    )
    return cfg


def _add_bursts(rng: np.random.Generator, cfg: _Cfg, strong: bool = True) -> None:
    cfg.load.bursts = _Bursts(
        rate_per_hour=_u(rng, 0.15, 0.6) if strong else _u(rng, 0.05, 0.25),
        long_fraction=0.7,
        mult=(1.5, 4.0),
    )
    cfg.load_frac = _u(rng, 0.15, 0.45)
    cfg.residue = _u(rng, 0.15, 0.6) if rng.random() < 0.85 else 0.0


def _add_saw(rng: np.random.Generator, cfg: _Cfg, amp: tuple[float, float] = (0.03, 0.25)) -> None:
    cfg.saw = (_lu(rng, 20.0, 15 * MINUTE), _u(rng, *amp))


def _add_cache(rng: np.random.Generator, cfg: _Cfg, slow: bool) -> None:
    fill = _u(rng, 3 * HOUR, 6 * HOUR) if slow else _u(rng, 1 * HOUR, 3 * HOUR)
    cfg.cache = (_lu(rng, 0.1, 1.5), fill)
    cfg.hours = max(cfg.hours, min(48.0, fill / HOUR * 1.6 + 2.0))


def _add_ratchet(rng: np.random.Generator, cfg: _Cfg) -> None:
    cfg.ratchet = (_u(rng, 0.2, 0.8), 2 * MiB if rng.random() < 0.6 else 20 * MiB)
    cfg.ratchet_frag = rng.random() < 0.5
    cfg.ratchet_release = rng.random() < 0.2
    cfg.quantum = 2 * MiB
    cfg.noise_rel = _lu(rng, 1e-4, 6e-4)
    cfg.drift = (cfg.drift[0], _u(rng, 0.001, 0.004))
    cfg.spikes_per_hour = 0.0


def _add_recycle(rng: np.random.Generator, cfg: _Cfg) -> None:
    cfg.restarts = "recycle" if cfg.requests else "timer"
    cfg.restart_every = _u(rng, 1 * HOUR, 8 * HOUR)
    cfg.attached_late = False


def _add_daily(rng: np.random.Generator, cfg: _Cfg) -> None:
    cfg.load.daily_amp = _u(rng, 0.3, 0.8)
    cfg.load_frac = _u(rng, 0.2, 0.6)
    cfg.residue = _u(rng, 0.05, 0.2) if rng.random() < 0.3 else 0.0
    cfg.hours = max(cfg.hours, _u(rng, 24.0, 48.0))


def _add_regime(rng: np.random.Generator, cfg: _Cfg) -> None:
    cfg.regime = (_u(rng, 1 * HOUR, 8 * HOUR), _u(rng, 0.08, 0.35))


def _add_drift(rng: np.random.Generator, cfg: _Cfg) -> None:
    cfg.drift = (_lu(rng, 30 * MINUTE, 4 * HOUR), _u(rng, 0.02, 0.06))
    cfg.noise_df = _u(rng, 2.2, 3.0)


def _quiet_cfg(rng: np.random.Generator, family: str) -> _Cfg:
    lv = (200 * MiB, 40 * GiB)
    if family == "burst":
        cfg = _common(rng, lv, (6.0, 36.0))
        _add_bursts(rng, cfg)
        if rng.random() < 0.3:
            _add_saw(rng, cfg, (0.02, 0.08))
    elif family == "ratchet":
        cfg = _common(rng, (1 * GiB, 40 * GiB), (8.0, 48.0))
        cfg.requests = rng.random() < 0.7
        _add_ratchet(rng, cfg)
    elif family == "sawtooth":
        cfg = _common(rng, (200 * MiB, 8 * GiB), (4.0, 24.0))
        cfg.requests = rng.random() < 0.6
        _add_saw(rng, cfg)
    elif family == "cache":
        cfg = _common(rng, lv, (8.0, 40.0))
        _add_cache(rng, cfg, slow=rng.random() < 0.5)
    elif family == "warmup":
        cfg = _common(rng, lv, (4.0, 24.0))
        cfg.tail = rng.random() < 0.8
        cfg.restarts = "crash" if rng.random() < 0.75 else None
        cfg.attached_late = False
    elif family == "recycle":
        cfg = _common(rng, lv, (12.0, 48.0))
        _add_recycle(rng, cfg)
        if rng.random() < 0.5:
            _add_cache(rng, cfg, slow=False)
    elif family == "daily":
        cfg = _common(rng, lv, (24.0, 48.0))
        _add_daily(rng, cfg)
    elif family == "regime":
        cfg = _common(rng, lv, (8.0, 40.0))
        _add_regime(rng, cfg)
    elif family == "drift":
        cfg = _common(rng, lv, (6.0, 30.0))
        cfg.requests = rng.random() < 0.6
        _add_drift(rng, cfg)
    elif family == "combo":
        cfg = _common(rng, lv, (8.0, 48.0))
        _combine(rng, cfg, int(rng.integers(2, 5)))
    else:
        raise ValueError(family)
    return cfg


_PARTS: dict[str, Callable[[np.random.Generator, _Cfg], None]] = {
    "bursts": lambda rng, cfg: _add_bursts(rng, cfg),
    "saw": lambda rng, cfg: _add_saw(rng, cfg, (0.03, 0.15)),
    "cache": lambda rng, cfg: _add_cache(rng, cfg, slow=rng.random() < 0.4),
    "ratchet": _add_ratchet,
    "recycle": _add_recycle,
    "daily": _add_daily,
    "regime": _add_regime,
    "drift": _add_drift,
}


def _combine(rng: np.random.Generator, cfg: _Cfg, n: int, exclude: tuple[str, ...] = ()) -> None:
    names = [k for k in _PARTS if k not in exclude]
    picked = [names[i] for i in sorted(rng.choice(len(names), n, replace=False))]
    for name in picked:
        _PARTS[name](rng, cfg)
    if "daily" in picked and "bursts" in picked:
        cfg.load_frac = _u(rng, 0.15, 0.4)


def _leak_cfg(rng: np.random.Generator, family: str, short: bool) -> tuple[_Cfg, _Leak]:
    lv = (200 * MiB, 40 * GiB)
    cfg = _common(rng, lv, (1.0, 1.0))
    if family == "leak_after_burst":
        prefix = _u(rng, 2 * HOUR, 12 * HOUR)
    elif rng.random() < 0.25:
        prefix = 0.0
    else:
        prefix = _u(rng, 0.25 * HOUR, 12 * HOUR)
    if short:
        d = _u(rng, 22 * MINUTE, 58 * MINUTE)
    elif family == "leak_slow":
        d = _u(rng, 24 * HOUR, 46 * HOUR)
    else:
        d = _lu(rng, 1.15 * HOUR, 40 * HOUR)
    shape = "linear"
    into_ratchet = False
    if family == "leak_linear":
        if rng.random() < 0.4:
            _add_saw(rng, cfg, (0.02, 0.06))
        cfg.requests = rng.random() < 0.7
    elif family == "leak_request":
        cfg.load.daily_amp = _u(rng, 0.2, 0.7)
        cfg.load.bursts = _Bursts(rate_per_hour=_u(rng, 0.0, 0.4))
        cfg.load_frac = _u(rng, 0.1, 0.3)
        shape = "request"
    elif family == "leak_sawtooth":
        _add_saw(rng, cfg, (0.05, 0.25))
        shape = "linear" if rng.random() < 0.6 else "power"
        cfg.requests = rng.random() < 0.7
    elif family == "leak_quantised":
        cfg.level = _lu(rng, 1 * GiB, 40 * GiB)
        _add_ratchet(rng, cfg)
        seg_mib = 2.0 ** round(math.log2(cfg.level * _u(rng, 0.04, 0.15) / MiB))
        cfg.ratchet = (_u(rng, 0.05, 0.3), seg_mib * MiB)
        cfg.ratchet_release = False
        cfg.noise_rel = _lu(rng, 3e-5, 2e-4)
        cfg.drift = (HOUR, 0.001)
        cfg.load_frac = 0.02
        cfg.tail = False
        into_ratchet = True
        shape = "linear" if rng.random() < 0.5 else "request"
    elif family == "leak_after_burst":
        _add_bursts(rng, cfg)
        shape = "linear" if rng.random() < 0.5 else "request"
    elif family == "leak_slow":
        if rng.random() < 0.5:
            _add_saw(rng, cfg, (0.02, 0.1))
        if rng.random() < 0.4:
            cfg.load.daily_amp = _u(rng, 0.2, 0.6)
            cfg.load_frac = _u(rng, 0.1, 0.3)
        shape = "linear" if rng.random() < 0.6 else "power"
    elif family == "leak_rate_change":
        shape = ["power", "piecewise", "log", "exp"][int(rng.integers(4))]
        if rng.random() < 0.4:
            _add_saw(rng, cfg, (0.02, 0.1))
    elif family == "leak_combo":
        _combine(rng, cfg, int(rng.integers(2, 4)), exclude=("ratchet",))
        shape = ["linear", "chunks", "request", "power"][int(rng.integers(4))]
    else:
        raise ValueError(family)
    if shape == "request":
        cfg.requests = True
    if cfg.requests is False and cfg.restarts == "recycle":
        cfg.restarts = "timer"
    if prefix < HOUR:
        cfg.restarts = None
    return cfg, _Leak(onset=prefix, target=prefix + d, shape=shape, into_ratchet=into_ratchet)


# ---------------------------------------------------------------------------------------------
# traces


def _quiet_trace(rng: np.random.Generator, family: str, i: int) -> Trace | None:
    cfg = _quiet_cfg(rng, family)
    horizon = min(48.0, max(4.0, cfg.hours)) * HOUR
    model = _build(rng, cfg, horizon, None)
    values = model.render()
    work = float(np.median(values))
    peak = float(values.max())
    if rng.random() < 0.35:  # sized tight: the peak just fits
        need = max(1.2 * work, peak / _u(rng, 0.75, 0.89))
    else:
        headroom = _lu(rng, 1.2, 2.2) if rng.random() < 0.6 else _lu(rng, 2.2, 4.0)
        need = max(headroom * work, peak / _u(rng, 0.6, 0.89))
    limit = _nice_ceil(need, decimal=rng.random() < 0.3)
    if peak > QUIET_MAX_FILL * limit:
        return None
    return Trace(
        name=f"alt/{family}/{i}",
        family=family,
        kind="quiet",
        ood=False,
        times=model.times,
        values=values,
        limit=limit,
        starts=model.starts,
        source="alt",
        requests=model.requests,
    )


def _leak_trace(rng: np.random.Generator, family: str, i: int, short: bool) -> Trace | None:
    cfg, leak = _leak_cfg(rng, family, short)
    model = _build(rng, cfg, leak.target, leak)
    clean = model.render(0.0)
    onset_i = int(np.searchsorted(model.times, leak.onset, side="left"))
    pre = clean[: max(onset_i, 1)]
    work = float(np.median(pre if len(pre) > 20 else clean))
    u = _u(rng, 0.72, 0.87) if short else _u(rng, 0.5, 0.85)
    limit = _nice_ceil(
        max(_lu(rng, 1.15, 3.0) * work, float(clean.max()) / u), decimal=rng.random() < 0.3
    )

    def crossing(amount: float) -> int | None:
        hit = np.flatnonzero(model.render(amount) >= limit)
        return int(hit[0]) if len(hit) else None

    lo, hi = 0.0, 2.0 * limit
    if crossing(hi) is None:
        return None
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        if crossing(mid) is None:
            lo = mid
        else:
            hi = mid
    values = model.render(hi)
    c = crossing(hi)
    assert c is not None
    t_oom = float(model.times[c])
    band = SHORT_BAND if short else LONG_BAND
    if not band[0] <= t_oom - leak.onset <= band[1] or c <= onset_i:
        return None
    return Trace(
        name=f"alt/{family}/{i}",
        family=family,
        kind="leak",
        ood=False,
        times=model.times[: c + 1],
        values=values[: c + 1],
        limit=limit,
        t_leak=leak.onset,
        t_oom=t_oom,
        starts=model.starts,
        source="alt",
        requests=None if model.requests is None else model.requests[: c + 1],
    )


def _rng(seed: int, family: str, i: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(family.encode()), i, 0xA17])


def _short_flags() -> dict[tuple[str, int], bool]:
    """Which leak traces get a 20–60 min onset-to-OOM: SHORT_FRACTION of all, spread evenly."""
    total = sum(LEAK_FAMILIES.values())
    pool = [(f, i) for f, n in LEAK_FAMILIES.items() if f != "leak_slow" for i in range(n)]
    n_short = round(SHORT_FRACTION * total)
    return {key: (k * n_short) % len(pool) < n_short for k, key in enumerate(pool)}


def generate(seed: int = 0, quick: bool = False) -> list[Trace]:
    """The alt corpus for ``seed``; ``quick`` keeps about an eighth of each family."""
    shorts = _short_flags()
    out: list[Trace] = []
    for family, n in QUIET_FAMILIES.items():
        for i in range(n):
            if quick and i >= max(1, round(n * QUICK_SHARE)):
                continue
            rng = _rng(seed, family, i)
            for _ in range(50):
                trace = _quiet_trace(rng, family, i)
                if trace is not None:
                    out.append(trace)
                    break
            else:  # pragma: no cover - the draws above always succeed well before this
                raise RuntimeError(f"could not draw alt/{family}/{i}")
    for family, n in LEAK_FAMILIES.items():
        for i in range(n):
            if quick and i >= max(1, round(n * QUICK_SHARE)):
                continue
            rng = _rng(seed, family, i)
            short = shorts.get((family, i), False)
            for _ in range(50):
                trace = _leak_trace(rng, family, i, short)
                if trace is not None:
                    out.append(trace)
                    break
            else:  # pragma: no cover
                raise RuntimeError(f"could not draw alt/{family}/{i}")
    return out
