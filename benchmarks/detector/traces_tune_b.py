"""A second tuning corpus of synthetic memory traces ("tune_b"), written apart from ``traces``.

Every trace is one service (or a few successive processes of it) simulated on a sampling grid:
an offered request load, processes that warm up and then serve it, memory components that
react to the load or to time, measurement noise on top, and for leak traces a leak whose size
is solved so that the process reaches its limit (OOM) near a drawn time. The state of every
component evolves on the whole grid; scrape gaps and restarts only remove samples afterwards.

Workload profiles (drawn per trace; they set the level, interpreter floor, request rate,
request latency and warm-up length):
  web     gunicorn/uvicorn worker: 150 MiB–1.5 GiB, 2–80 req/s, 20–400 ms, warm-up 5–90 s
  tts     TTS on PyTorch: 0.8–6 GiB, 0.05–3 req/s, 0.4–6 s, warm-up 30 s–5 min
  vision  vision model: 1.5–12 GiB, 1–40 req/s, 30–500 ms, warm-up 20 s–4 min
  llm     LLM server: 5–40 GiB, 0.05–2 req/s, 2–30 s, warm-up 2–20 min

Load model: a base rate times an optional daily cycle (two harmonics, random phase), times an
optional slow log-normal wander (OU, 5–90 min), plus optional bursts (rate ramps up over 1–10
min, holds 5–60 min, ramps down over 1–10 min, 1–6x the base, linear or cosine ramps). Requests
arrive as Poisson counts of the load over each sampling interval; a process serves them only
once its warm-up is over. The ``requests`` counter is the cumulative count a process has served
(0 at each process start). It is None where there is no load model, and for 15 % of the
traces with one: about 30 % of all traces have no counter.

Warm-up shapes (one kind per trace, its parameters drawn per process): exponential,
shard-loading steps, smooth ramp, overshoot (a state dict staged on the host, then freed) and
log-like, from the interpreter floor to the working level.

Memory components (bounded; used by the quiet families and as background of the leak ones):
  activation   batch buffers: in-flight requests (Poisson of load x latency), padded to batch
               buckets (none, multiple of 4, power of 2), capped at a max batch; fast to rise,
               slow to be released (5 s–10 min); a new peak leaves a high-water residue of
               10–60 % of it (glibc arenas do not give back)
  request_size long-prompt / long-audio periods (Markov: normal 2–8 h, long 1–5 h) raising the
               working set by 8–60 % with 5–40 min ramps, optionally a small residue
  lru          a bounded LRU cache (1–3 of them in lru_cache); entries = distinct keys seen
               under a Zipf popularity (exponent 0.6–1.4, 2e3–2e6 keys), so the fill rises
               like a power/log of the keys drawn, then stops at capacity; full in 20 min–8 h
               (well before the trace or a recycled worker ends), driven by requests or time
  torch        caching allocator: reserved memory follows the running peak of the batch shape
               (max of Pareto sequence lengths over the batches served, capped), rounded up to
               segments of 2 MiB, 20 MiB, 64 MiB, 128 MiB, 512 MiB or 1 GiB, so steps come
               ever more rarely; occasional empty_cache drops it to the current need
  arenas       many threads: irregular lognormal steps at log-uniform times early on (30 s to
               20 min–8 h), then flat; occasional malloc_trim drops that grow back in 1–30 min
  sawtooth     GC / arena sawtooth, period 10 s–20 min (gamma-distributed, regular to very
               irregular), amplitude 1–20 %, linear, concave or convex rise, full or partial
               drop; advancing with time or with the load (allocations)
  follow       memory follows the load through an EMA (2–60 min), 3–35 % of the level per unit
  wander       bounded OU wander (0.2–3 % of the level, 10 min–4 h)
  lazy         1–3 lazy-initialisation steps (cuDNN workspace, lazy imports) at early requests
  creep        bounded per-process fragmentation creep (saturating, 5–40 min time constant)

Quiet families (4–48 h, peak at most 90 % of the limit):
  steady         warm-up then flat with noise, sometimes wander / lazy steps / restarts
  burst_batch    bursty load, activation with batching and high-water residues
  request_size   long-input periods for hours, then back (with activation or caches)
  lru_cache      1–3 Zipf-filled LRU caches of different sizes and fill times
  torch_alloc    caching-allocator reserved memory (70 % exact readings, 2 MiB pages)
  glibc_arenas   thread-arena creep early on, then flat, with malloc_trim drops
  gunicorn       max_requests recycling (with jitter): a restart every 1–6 h of load
  gc_sawtooth    one or two sawtooths (a fast small one and a slow big one)
  daily_cycle    a daily traffic cycle that memory follows (20–48 h)
  combo          2–4 of the components above, sometimes with restarts
Leak families (a leak-free prefix of 0–12 h, ~25 % leak from a process start; onset-to-OOM
mostly 1–48 h log-uniform, 10 % 20–60 min, the slow family 24–72 h; 0–2 background
components each):
  leak_request    per-request retention (a module-level dict of audio tensors): grows with the
                  served requests under a daily / bursty load
  leak_constant   a thread appending at a constant rate, sometimes in chunks (10 s–10 min)
  leak_sawtooth   linear or per-request leak under a GC sawtooth; the upper envelope hits
  leak_allocator  a leak seen through the caching allocator: steps of 2–10 % of the level
  leak_bursts     hours of bursts and ratchets first; then retention that mostly grows in
                  bursts (per-request, burst requests retaining more) or steadily
  leak_slow       1–3 days to OOM, 30–120 s sampling, daily cycle
  leak_accel      accelerating: power 1.3–2.5, exponential, or quadratic in requests (a list
                  whose elements grow)
  leak_decel      decelerating but unbounded: power 0.35–0.75 (of time or of requests) or log
  leak_two_rate   the rate changes once (x0.15–6) between 15 and 75 % of the way
  leak_warmup     leaks from the process start, during the warm-up (sometimes after a deploy)
Restarts happen in quiet traces or before a leak's onset only; samples are lost for 10–60 s
around each; ``starts`` lists them, the first being the trace start (0).

Measurement (drawn per trace, independent of the family): sampling interval 1–120 s (a nice
value or any), regular, jittered (±5–45 %) or irregular (gamma intervals), never more than
18 000 grid samples (long traces sample coarser); 0–5 scrape gaps of 1–45 min; noise Gaussian,
Student-t (2.2–5 dof, clipped) or level-proportional (0.05–1 % of the level), often with
correlated allocator churn (OU 30 s–15 min) and one-sample spikes up (2–15 %) or down
(5–50 %); quantisation to none, 4 KiB pages or 2 MiB; reserved-memory traces read exactly.
Limits: tight (peak at 75–90 %) or a round number (binary GiB, MiB or decimal "8G") at least
peak / 0.9. A leak's scale is bisected so that the first sample at or over the limit falls at
or just before the drawn OOM time; that sample ends the trace.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmarks.detector.traces import DAY, HOUR, MINUTE, GiB, MiB, Trace

KiB = 1024.0
SOURCE = "tune_b"
MAX_SAMPLES = 20_000
_GRID_CAP = 18_000  # samples on the full grid; gaps and restarts only remove some
_NICE_DT = (1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 60.0, 90.0, 120.0)

Rng = np.random.Generator
Array = np.ndarray


@dataclass(frozen=True)
class Profile:
    level: tuple[float, float]  # working level, bytes (log-uniform)
    floor: tuple[float, float]  # interpreter + imports before the warm-up
    rate: tuple[float, float]  # requests per second at the mean load
    latency: tuple[float, float]  # seconds a request is in flight
    warmup: tuple[float, float]  # seconds to load the model / fill the process


PROFILES = {
    "web": Profile((150 * MiB, 1.5 * GiB), (40 * MiB, 110 * MiB), (2, 80), (0.02, 0.4), (5, 90)),
    "tts": Profile((0.8 * GiB, 6 * GiB), (350 * MiB, 700 * MiB), (0.05, 3), (0.4, 6), (30, 300)),
    "vision": Profile(
        (1.5 * GiB, 12 * GiB), (350 * MiB, 800 * MiB), (1, 40), (0.03, 0.5), (20, 240)
    ),
    "llm": Profile((5 * GiB, 40 * GiB), (0.5 * GiB, 2 * GiB), (0.05, 2), (2, 30), (120, 1200)),
}
ML = ("tts", "vision", "llm")
ANY = ("web", "tts", "vision", "llm")


@dataclass(frozen=True)
class LoadSpec:
    daily: bool = False
    bursts: bool = False
    wander: bool = True
    burst_every: tuple[float, float] = (0.5 * HOUR, 4 * HOUR)  # mean gap between bursts
    burst_height: tuple[float, float] = (1.0, 6.0)  # added rate, in units of the base rate
    wander_sigma: tuple[float, float] = (0.05, 0.35)  # log-normal slow fluctuation


# ---------------------------------------------------------------------------------------------
# small numeric helpers


def _logu(rng: Rng, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _ar1(decay: Array, drive: Array) -> Array:
    """x[i] = decay[i] * x[i-1] + drive[i] (x[-1] = 0); a loop over floats, fast enough."""
    out = [0.0] * len(decay)
    x = 0.0
    for i, (a, d) in enumerate(zip(decay.tolist(), drive.tolist(), strict=True)):
        x = a * x + d
        out[i] = x
    return np.asarray(out)


def _ou(rng: Rng, t: Array, tau: float, sigma: float) -> Array:
    """A stationary OU process, sampled exactly on an irregular grid."""
    decay = np.exp(-np.diff(t, prepend=t[0]) / tau)
    decay[0] = 0.0
    return _ar1(decay, sigma * np.sqrt(1.0 - decay**2) * rng.standard_normal(len(t)))


def _ema(t: Array, x: Array, tau: float) -> Array:
    decay = np.exp(-np.diff(t, prepend=t[0]) / tau)
    decay[0] = 0.0
    return _ar1(decay, (1.0 - decay) * x)


def _up_fast_down_slow(t: Array, target: Array, tau: float) -> Array:
    """Memory that jumps up to a new need at once but is given back only slowly."""
    decay = np.exp(-np.diff(t, prepend=t[0]) / tau).tolist()
    out = [0.0] * len(target)
    y = 0.0
    for i, (a, x) in enumerate(zip(decay, target.tolist(), strict=True)):
        y = x if x >= y else x + (y - x) * a
        out[i] = y
    return np.asarray(out)


def _pad(k: Array, how: int) -> Array:
    """Batch buckets: none, a multiple of 4, or the next power of 2."""
    if how == 1:
        return np.ceil(k / 4.0) * 4.0
    if how == 2:
        return np.where(k > 0, 2.0 ** np.ceil(np.log2(np.maximum(k, 1.0))), 0.0)
    return k.astype(float)


# ---------------------------------------------------------------------------------------------
# sampling grid, load, limits


def _grid(rng: Rng, duration: float, dt_range: tuple[float, float]) -> Array:
    if rng.random() < 0.6:
        nice = [d for d in _NICE_DT if dt_range[0] <= d <= dt_range[1]] or [dt_range[0]]
        dt = float(rng.choice(nice))
    else:
        dt = _logu(rng, *dt_range)
    dt = max(dt, duration / _GRID_CAP)  # long traces sample coarser
    n = int(duration / dt) + 1
    mode = rng.choice(3, p=[0.45, 0.35, 0.2])
    if mode == 0:  # a scraper on a timer
        return np.arange(n) * dt
    if mode == 1:  # jitter under half an interval keeps the order
        j = rng.uniform(0.05, 0.45)
        t = np.arange(n) * dt + rng.uniform(-j, j, n) * dt
        t[0] = 0.0
        return t
    k = rng.uniform(0.8, 4.0)  # irregular: a push agent on a busy event loop
    iv = np.maximum(rng.gamma(k, dt / k, n - 1), 0.02 * dt)
    t = np.concatenate([[0.0], np.cumsum(iv)])
    return t * (duration / t[-1])


def _bursts(rng: Rng, t: Array, spec: LoadSpec) -> Array:
    x = np.zeros(len(t))
    gap = _logu(rng, *spec.burst_every)
    smooth = rng.random() < 0.5
    s = rng.exponential(gap)
    while s < t[-1]:
        up, hold, down = (rng.uniform(1, 10) * MINUTE, rng.uniform(5, 60) * MINUTE,
                          rng.uniform(1, 10) * MINUTE)  # fmt: skip
        lo, hi = np.searchsorted(t, [s, s + up + hold + down])
        u = t[lo:hi] - s
        shape = np.minimum(np.clip(u / up, 0, 1), np.clip((up + hold + down - u) / down, 0, 1))
        if smooth:
            shape = 0.5 - 0.5 * np.cos(np.pi * shape)
        x[lo:hi] += _logu(rng, *spec.burst_height) * shape
        s += up + hold + down + rng.exponential(gap)
    return x


def _load(rng: Rng, t: Array, rate: float, spec: LoadSpec) -> Array:
    x = np.ones(len(t))
    if spec.daily:
        a1, a2 = rng.uniform(0.3, 0.85), rng.uniform(0.0, 0.3)
        p1, p2 = rng.uniform(0, 1), rng.uniform(0, 1)
        x = (
            1
            + a1 * np.cos(2 * np.pi * (t / DAY - p1))
            + a1 * a2 * np.cos(4 * np.pi * (t / DAY - p2))
        )
        x = np.maximum(x, 0.05)
    if spec.wander:
        tau = _logu(rng, 5 * MINUTE, 90 * MINUTE)
        x = x * np.exp(_ou(rng, t, tau, rng.uniform(*spec.wander_sigma)))
    if spec.bursts:
        x = x + _bursts(rng, t, spec)
    return rate * x


# What people write in a memory limit: Kubernetes "2Gi" / "8G", systemd MemoryMax, docker -m.
_LIMITS_MIB = (256, 384, 512, 640, 768)
_LIMITS_MB = (300, 400, 500, 600, 750, 800)
_LIMITS_GIB = (1, 1.25, 1.5, 2, 2.5, 3, 3.5, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40,
               48, 56, 64, 80, 96, 112, 128, 160, 192, 256)  # fmt: skip
_LIMITS_GB = (0.5, 1, 1.5, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 25, 30, 32, 40, 50, 64, 80, 100, 128,
              150, 200)  # fmt: skip
_ROUND_LIMITS = np.array(
    sorted(
        [x * MiB for x in _LIMITS_MIB]
        + [x * 1e6 for x in _LIMITS_MB]
        + [x * GiB for x in _LIMITS_GIB]
        + [x * 1e9 for x in _LIMITS_GB]
    )
)


def _limit(rng: Rng, peak: float) -> float:
    """A tight limit (peak at 75–90 %) or the round number a person would have written."""
    cands = _ROUND_LIMITS[np.searchsorted(_ROUND_LIMITS, peak / 0.9) :]
    if rng.random() < 0.45 or len(cands) == 0:
        return peak / rng.uniform(0.75, 0.9)
    k = 0 if rng.random() < 0.75 or len(cands) == 1 else 1
    return float(cands[k])


def _onset_to_oom(rng: Rng, slow: bool = False) -> float:
    if slow:
        return _logu(rng, 24 * HOUR, 72 * HOUR)
    if rng.random() < 0.1:
        return rng.uniform(20, 60) * MINUTE
    return _logu(rng, HOUR, 48 * HOUR)


def _quiet_duration(rng: Rng, lo: float = 4.0) -> float:
    r = rng.random()
    if r < 0.35:
        return rng.uniform(lo, max(lo, 12.0)) * HOUR
    return rng.uniform(12, 30) * HOUR if r < 0.75 else rng.uniform(30, 48) * HOUR


# ---------------------------------------------------------------------------------------------
# the simulation


@dataclass
class Proc:
    """One process lifetime on the full grid: samples lo..hi-1."""

    lo: int
    hi: int
    tau: Array  # seconds since the process started
    ready: float  # warm-up over, serving from here (seconds since start)
    up: Array  # serving
    dserved: Array  # requests served in each interval
    served: Array  # cumulative, 0 at the start


Component = Callable[[Proc], Array]
WARM_KINDS = ("exp", "steps", "ramp", "overshoot", "log")


class Sim:
    def __init__(
        self,
        rng: Rng,
        profile: str,
        duration: float,
        load: LoadSpec | None = None,
        dt_range: tuple[float, float] = (1.0, 120.0),
    ) -> None:
        prof = PROFILES[profile]
        self.rng = rng
        self.prof = prof
        self.level = _logu(rng, *prof.level)
        self.floor = min(_logu(rng, *prof.floor), 0.5 * self.level)
        self.t = _grid(rng, duration, dt_range)
        self.n = len(self.t)
        self.dt = np.diff(self.t, prepend=self.t[0])
        self.rate = _logu(rng, *prof.rate)
        self.latency = _logu(rng, *prof.latency)
        self.has_load = load is not None
        if load is None:
            self.lam = np.zeros(self.n)
            self.dreq = np.zeros(self.n)
        else:
            self.lam = _load(rng, self.t, self.rate, load)
            mid = 0.5 * (self.lam + np.concatenate([self.lam[:1], self.lam[:-1]]))
            self.dreq = rng.poisson(mid * self.dt).astype(float)
        self.lam_mean = float(self.lam.mean()) if self.has_load else 1.0
        self.counter = self.has_load and rng.random() >= 0.15
        self.warm_kind = str(rng.choice(WARM_KINDS))
        self.quantum = float(rng.choice([0.0, 4 * KiB, 2 * MiB], p=[0.3, 0.5, 0.2]))
        self.exact = False  # reserved-memory readings: next to no noise
        self.starts: list[int] = [0]
        self.recycle_every = 0.0  # gunicorn: the mean seconds between restarts
        self.warm_T: list[float] = []
        self.procs: list[Proc] = []
        self.clean = np.zeros(self.n)
        self.dserved = np.zeros(self.n)
        self.served = np.zeros(self.n)

    # restarts ---------------------------------------------------------------------------------

    def restart_at(self, times: list[float]) -> None:
        idx = sorted({int(np.searchsorted(self.t, s)) for s in times})
        self.starts = [0] + [j for j in idx if 0 < j < self.n - 1]

    def restart_random(self, k: int, lo: float = 30 * MINUTE, hi: float | None = None) -> None:
        """Deploys, crash-loop restarts, node moves: at least 40 min apart."""
        # quiet traces: restart in the first half, so that what refills has time to be full
        hi = 0.55 * self.t[-1] if hi is None else hi
        if hi - lo < 40 * MINUTE:
            return
        chosen: list[float] = []
        for s in np.sort(self.rng.uniform(lo, hi, k)):
            if not chosen or s - chosen[-1] >= 40 * MINUTE:
                chosen.append(float(s))
        self.restart_at(chosen)

    def restart_gunicorn(self, hours: tuple[float, float] = (1.0, 6.0)) -> None:
        """max_requests + randint(0, jitter): a worker exits once it has served that many."""
        rng = self.rng
        self.recycle_every = rng.uniform(*hours) * HOUR
        max_req = max(20.0, self.lam_mean * self.recycle_every)
        jitter = int(max_req * rng.uniform(0.05, 0.5))
        cum = np.cumsum(self.dreq)
        lo = 0
        while True:
            self.warm_T.append(self._draw_warm())
            r = int(np.searchsorted(self.t, self.t[lo] + self.warm_T[-1]))
            if r >= self.n:
                break
            j = int(np.searchsorted(cum, cum[r] + max_req + rng.integers(0, jitter + 1)))
            if j >= self.n or self.t[j] > self.t[-1] - 20 * MINUTE:
                break
            lo = max(j, r + 1)
            self.starts.append(lo)

    # processes and memory ------------------------------------------------------------------

    def horizon(self, cap: float = 8 * HOUR) -> float:
        """The longest a bounded component may take to fill: it must be full well before the
        trace (or a recycled worker) ends, or a quiet trace would end still growing."""
        h = min(cap, 0.4 * self.t[-1])
        if self.recycle_every > 0:
            h = min(h, 0.3 * self.recycle_every)
        return max(h, 25 * MINUTE)

    def _draw_warm(self) -> float:
        return _logu(self.rng, *self.prof.warmup)

    def _warm(self, tau: Array, T: float) -> Array:
        rng, x = self.rng, tau / T
        kind = self.warm_kind
        if kind == "exp":
            return 1.0 - np.exp(-4.0 * x)
        if kind == "steps":  # weight shards read one after another
            k = int(rng.integers(3, 12))
            at, w = np.sort(rng.uniform(0, 0.95, k)), rng.dirichlet(np.ones(k))
            width = rng.uniform(0.01, 0.08)
            return np.sum(w[:, None] * np.clip((x[None, :] - at[:, None]) / width, 0, 1), axis=0)
        if kind == "ramp":
            s = np.clip(x, 0, 1)
            return s * s * (3 - 2 * s)
        if kind == "overshoot":  # a state dict staged on the host, then freed
            o = rng.uniform(0.15, 0.8)
            s = np.clip(x / 0.6, 0, 1)
            return np.where(
                x < 0.6, (1 + o) * s * s * (3 - 2 * s), 1 + o * np.exp(-(x - 0.6) / 0.08)
            )
        return np.minimum(np.log1p(20 * x) / math.log1p(20), 1.0)  # log-like

    def build(self, comps: list[Component]) -> None:
        while len(self.warm_T) < len(self.starts):
            self.warm_T.append(self._draw_warm())
        bounds = [*self.starts, self.n]
        for k, lo in enumerate(self.starts):
            hi = bounds[k + 1]
            tau = self.t[lo:hi] - self.t[lo]
            ready = self.warm_T[k]
            up = tau >= ready
            ds = self.dreq[lo:hi] * up
            p = Proc(lo, hi, tau, ready, up, ds, np.cumsum(ds))
            self.procs.append(p)
            self.dserved[lo:hi] = ds
            self.served[lo:hi] = p.served
            v = self.floor + self._warm(tau, ready) * (self.level - self.floor)
            for c in comps:
                v = v + c(p)
            self.clean[lo:hi] = v

    # measurement ----------------------------------------------------------------------------

    def measure(self) -> Array:
        rng, n, lvl, clean = self.rng, self.n, self.level, self.clean
        if self.exact:
            s = lvl * _logu(rng, 1e-5, 3e-4) if rng.random() < 0.5 else 0.0
            return clean + s * rng.standard_normal(n)
        kind = rng.integers(3)
        s = lvl * _logu(rng, 5e-4, 1e-2)
        if kind == 0:
            e = s * rng.standard_normal(n)
        elif kind == 1:  # heavy tails: allocator hiccups, page-cache accounting
            e = np.clip(s * rng.standard_t(rng.uniform(2.2, 5.0), n), -0.1 * lvl, 0.1 * lvl)
        else:
            e = clean * (s / lvl) * rng.standard_normal(n)
        if rng.random() < 0.5:  # correlated allocator churn
            e = e + _ou(rng, self.t, _logu(rng, 30, 900), lvl * _logu(rng, 1e-3, 1e-2))
        v = clean + e
        if rng.random() < 0.4:  # one-sample spikes: a transient copy, a half-read scrape
            k = int(rng.poisson(n * _logu(rng, 1e-4, 1.5e-3)))
            pos = rng.integers(1, n, k)
            upw = rng.random(k) < 0.6
            mag = np.where(upw, rng.uniform(0.02, 0.15, k), -rng.uniform(0.05, 0.5, k))
            v[pos] += clean[pos] * mag
        return np.maximum(v, 0.3 * self.floor)

    def quantise(self, v: Array) -> Array:
        q = self.quantum
        return np.round(v / q) * q if q > 0 else v

    def keep_mask(self) -> Array:
        rng, t = self.rng, self.t
        keep = np.ones(self.n, dtype=bool)
        for j in self.starts[1:]:  # the scraper misses the restart itself
            w = rng.uniform(10, 60)
            a = rng.uniform(0, 1) * w
            keep[(t >= t[j] - a) & (t <= t[j] + w - a)] = False
            keep[j] = False
        for _ in range(int(rng.choice(6, p=[0.3, 0.25, 0.2, 0.12, 0.08, 0.05]))):
            length = _logu(rng, MINUTE, 45 * MINUTE)
            if t[-1] - length - 7 * MINUTE <= 5 * MINUTE:
                continue
            s = rng.uniform(5 * MINUTE, t[-1] - length - 2 * MINUTE)
            keep[(t > s) & (t < s + length)] = False
        keep[0] = True
        return keep

    def _requests(self, keep: Array) -> Array | None:
        return self.served[keep].copy() if self.counter else None

    # traces ---------------------------------------------------------------------------------

    def quiet_trace(self, name: str, family: str) -> Trace:
        noisy = self.measure()
        keep = self.keep_mask()
        v = self.quantise(noisy)[keep]
        return Trace(
            name=name,
            family=family,
            kind="quiet",
            ood=False,
            times=self.t[keep].copy(),
            values=v,
            limit=_limit(self.rng, float(v.max())),
            starts=tuple(float(self.t[j]) for j in self.starts),
            source=SOURCE,
            requests=self._requests(keep),
        )

    def leak_trace(
        self, name: str, family: str, g: Array, onset: float, dur: float, seg: float = 0.0
    ) -> Trace:
        rng = self.rng
        noisy = self.measure()
        keep = self.keep_mask()
        tk, qk = self.t[keep], noisy[keep]
        gk = np.where(tk > onset, g[keep], 0.0)
        limit = _limit(rng, float(self.quantise(qk).max()))
        ti = max(int(np.searchsorted(tk, onset + dur, side="right")) - 1, 0)
        if ti < len(tk) - 1 and tk[ti] <= onset:
            ti += 1
        if gk[: ti + 1].max() <= 0:  # nothing retained yet by then: fall back to a trickle
            gk = gk + np.maximum(tk - onset, 0.0)
        phase = rng.random()

        def grown(a: float) -> Array:
            if seg > 0:  # tensors kept alive show only as whole new segments
                return seg * (np.floor(a * gk / seg + phase) - math.floor(phase))
            return a * gk

        def first(a: float) -> int:
            leak = grown(a)
            hit = np.flatnonzero(self.quantise(qk + leak) >= limit)
            return int(hit[0]) if len(hit) else len(tk)

        lo, hi = 0.0, 2.0 * (limit - float(qk.min()) + seg + 4 * MiB) / float(gk[: ti + 1].max())
        while first(hi) > ti:  # cannot happen by construction, but never loop forever
            hi *= 2.0
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            if first(mid) <= ti:
                hi = mid
            else:
                lo = mid
        c = first(hi)
        v = self.quantise(qk + grown(hi))[: c + 1]
        times = tk[: c + 1].copy()
        req = self._requests(keep)
        return Trace(
            name=name,
            family=family,
            kind="leak",
            ood=False,
            times=times,
            values=v,
            limit=limit,
            t_leak=float(onset),
            t_oom=float(times[-1]),
            starts=tuple(float(self.t[j]) for j in self.starts),
            source=SOURCE,
            requests=None if req is None else req[: c + 1],
        )


# ---------------------------------------------------------------------------------------------
# memory components (each draws its parameters once per trace, its randomness per process)


def activation(sim: Sim, residue: float | None = None) -> Component:
    rng = sim.rng
    peak_mu = max(float(sim.lam.max()) * sim.latency, 1.0)
    how = int(rng.integers(3))
    max_batch = float(_pad(np.array([math.ceil(peak_mu * rng.uniform(0.7, 1.6))]), how)[0])
    per_item = sim.level * _logu(rng, 0.05, 0.5) / max_batch
    release = _logu(rng, 5, 600)
    if residue is None:
        residue = rng.uniform(0.1, 0.6) if rng.random() < 0.7 else 0.0

    def comp(p: Proc) -> Array:
        k = rng.poisson(sim.lam[p.lo : p.hi] * sim.latency) * p.up
        a = _up_fast_down_slow(p.tau, per_item * np.minimum(_pad(k, how), max_batch), release)
        return a + residue * np.maximum.accumulate(a)  # a new peak's fragments stay

    return comp


def request_size(sim: Sim) -> Component:
    rng, t = sim.rng, sim.t
    extra = sim.level * _logu(rng, 0.08, 0.6)
    ramp = _logu(rng, 5 * MINUTE, 40 * MINUTE)
    normal, long_ = rng.uniform(2, 8) * HOUR, rng.uniform(1, 5) * HOUR
    sig = np.zeros(sim.n)
    s = 0.0 if rng.random() < 0.25 else rng.exponential(normal)
    while s < t[-1]:
        e = s + max(rng.exponential(long_), 2 * ramp)
        sig += np.clip((t - s) / ramp, 0, 1) - np.clip((t - e) / ramp, 0, 1)
        s = e + max(rng.exponential(normal), 2 * ramp)
    wob = extra * np.clip(sig * (1 + _ou(rng, t, 20 * MINUTE, 0.15)), 0, None)
    res = rng.uniform(0, 0.25) if rng.random() < 0.5 else 0.0

    def comp(p: Proc) -> Array:
        x = wob[p.lo : p.hi] * p.up
        return x + res * np.maximum.accumulate(x)

    return comp


def _zipf_distinct(rng: Rng) -> Callable[[Array], Array]:
    """Expected distinct keys among n draws from a Zipf popularity over K keys (rank bins)."""
    K = int(_logu(rng, 2e3, 2e6))
    s = rng.uniform(0.6, 1.4)
    p = np.arange(1, K + 1, dtype=float) ** -s
    p /= p.sum()
    edges = np.unique(np.geomspace(1, K + 1, 300).astype(int)) - 1
    edges = edges[edges < K]
    count = np.diff(np.append(edges, K)).astype(float)
    pbar = np.add.reduceat(p, edges) / count
    lp = np.log1p(-pbar)
    ngrid = np.geomspace(1.0, 1e12, 400)
    dgrid = np.sum(count[None, :] * -np.expm1(ngrid[:, None] * lp[None, :]), axis=1)
    lgrid = np.log(ngrid)

    def distinct(n: Array) -> Array:
        return np.where(n >= 1.0, np.interp(np.log(np.maximum(n, 1.0)), lgrid, dgrid), n)

    return distinct


def lru(sim: Sim, size: float | None = None) -> Component:
    rng = sim.rng
    distinct = _zipf_distinct(rng)
    fill = _logu(rng, 20 * MINUTE, sim.horizon())
    by_requests = sim.has_load and rng.random() < 0.6
    if by_requests:  # keys looked up per request (voices, prompts, embeddings)
        per = max(_logu(rng, 0.3, 4), 200.0 / (sim.lam_mean * fill))
        n_full = per * sim.lam_mean * fill
    else:  # a background refresher walking keys on a timer
        per = _logu(rng, 0.05, 50) if rng.random() < 0.8 else 200.0 / fill
        n_full = per * fill
    cap = float(distinct(np.array([n_full]))[0])
    entry = sim.level * (size if size is not None else _logu(rng, 0.03, 0.8)) / cap

    def comp(p: Proc) -> Array:
        n = p.served * per if by_requests else np.maximum(p.tau - p.ready, 0.0) * per
        return entry * np.minimum(distinct(n), cap)

    return comp


def _segment(rng: Rng, level: float) -> float:
    segs = np.array([2 * MiB, 20 * MiB, 64 * MiB, 128 * MiB, 512 * MiB, 1 * GiB])
    segs = segs[segs <= max(0.08 * level, 2 * MiB)]
    return float(rng.choice(segs))


def torch_alloc(sim: Sim) -> Component:
    rng = sim.rng
    seg = _segment(rng, sim.level)
    act_max = sim.level * _logu(rng, 0.08, 0.6)
    alpha, smax, gamma = rng.uniform(1.1, 2.5), _logu(rng, 8, 200), float(rng.choice([1, 1.5, 2]))
    batch_every = _logu(rng, 0.2, 5)
    empty_every = _logu(rng, 1, 12) * HOUR if rng.random() < 0.4 else 0.0

    def comp(p: Proc) -> Array:
        m = len(p.tau)
        if sim.has_load:
            nb = p.dserved
        else:
            nb = rng.poisson(np.diff(p.tau, prepend=0.0) / batch_every) * p.up
        # the longest of nb Pareto shapes: the quantile U ** (1 / nb)
        one_minus = -np.expm1(np.log(rng.random(m)) / np.maximum(nb, 1))
        shape = np.where(nb > 0, np.minimum(np.maximum(one_minus, 1e-300) ** (-1 / alpha), smax), 0)
        peak = np.empty(m)
        cuts = [0]
        if empty_every > 0:
            s = rng.exponential(empty_every)
            while s < p.tau[-1]:
                cuts.append(int(np.searchsorted(p.tau, s)))
                s += rng.exponential(empty_every)
        cuts.append(m)
        for a, b in itertools.pairwise(cuts):
            peak[a:b] = np.maximum.accumulate(shape[a:b]) if b > a else 0
        return np.ceil(act_max * (peak / smax) ** gamma / seg) * seg

    return comp


def arenas(sim: Sim) -> Component:
    rng = sim.rng
    total = sim.level * _logu(rng, 0.03, 0.25)
    k = int(rng.integers(4, 30))
    creep_end = _logu(rng, 20 * MINUTE, sim.horizon())
    trim_every = _logu(rng, 1, 8) * HOUR if rng.random() < 0.6 else 0.0

    def comp(p: Proc) -> Array:
        at = p.ready + np.exp(rng.uniform(math.log(30), math.log(creep_end), k))
        sizes = rng.lognormal(0, 0.9, k)
        order = np.argsort(at)
        at, cum = at[order], np.cumsum(sizes[order] * total / sizes.sum())
        i = np.searchsorted(at, p.tau, side="right")
        creep = np.where(i > 0, cum[np.maximum(i - 1, 0)], 0.0)
        out = creep.copy()
        if trim_every > 0:
            s = p.ready + rng.exponential(trim_every)
            while s < p.tau[-1]:
                j = int(np.searchsorted(p.tau, s))
                back = _logu(rng, MINUTE, 30 * MINUTE)
                drop = rng.uniform(0.1, 0.6) * creep[min(j, len(creep) - 1)]
                out[j:] -= drop * np.exp(-(p.tau[j:] - s) / back)
                s += rng.exponential(trim_every)
        return np.maximum(out, 0.0)

    return comp


def sawtooth(
    sim: Sim, amp: tuple[float, float] = (0.01, 0.2), period: tuple[float, float] = (10, 1200)
) -> Component:
    rng = sim.rng
    P = _logu(rng, *period)
    A = sim.level * _logu(rng, *amp)
    k = float(rng.choice([1.5, 4.0, 15.0, 1e4]))  # very irregular .. clockwork
    rise = int(rng.integers(3))
    low = 0.0 if rng.random() < 0.6 else rng.uniform(0.2, 0.7)  # partial arena release
    by_load = sim.has_load and rng.random() < 0.5

    def comp(p: Proc) -> Array:
        if by_load:  # collections triggered by allocations, so by the requests
            work = np.cumsum(sim.lam[p.lo : p.hi] / sim.lam_mean * np.diff(p.tau, prepend=0.0))
        else:
            work = p.tau
        c = np.cumsum(rng.gamma(k, P / k, int(work[-1] / P * 1.3) + 20))
        while c[-1] <= work[-1]:
            c = np.concatenate([c, c[-1] + np.cumsum(rng.gamma(k, P / k, 50))])
        c = np.concatenate([[0.0], c])
        i = np.searchsorted(c, work, side="right") - 1
        ph = (work - c[i]) / (c[i + 1] - c[i])
        ph = ph if rise == 0 else np.sqrt(ph) if rise == 1 else ph**2
        amps = A * rng.uniform(0.7, 1.0, len(c))
        return amps[i] * (low + (1 - low) * ph)

    return comp


def follow(sim: Sim) -> Component:
    rng = sim.rng
    k = sim.level * _logu(rng, 0.03, 0.35)
    tau = _logu(rng, 2 * MINUTE, 60 * MINUTE)

    def comp(p: Proc) -> Array:
        return k * _ema(p.tau, sim.lam[p.lo : p.hi] / sim.lam_mean * p.up, tau)

    return comp


def wander(sim: Sim) -> Component:
    rng = sim.rng
    sig, tau = sim.level * _logu(rng, 0.002, 0.03), _logu(rng, 10 * MINUTE, 4 * HOUR)
    return lambda p: _ou(rng, p.tau, tau, sig)


def lazy(sim: Sim) -> Component:
    rng = sim.rng
    k = int(rng.integers(1, 4))
    sizes = sim.level * np.exp(rng.uniform(math.log(0.01), math.log(0.08), k))
    at_req = np.concatenate([[1.0], np.exp(rng.uniform(math.log(2), math.log(500), k - 1))])
    at_s = np.exp(rng.uniform(0, math.log(20 * MINUTE), k))

    def comp(p: Proc) -> Array:
        out = np.zeros(len(p.tau))
        for j in range(k):
            if sim.has_load:
                out += sizes[j] * (p.served >= at_req[j])
            else:
                out += sizes[j] * (p.tau >= p.ready + at_s[j])
        return out

    return comp


def creep(sim: Sim) -> Component:
    """Fragmentation that grows quickly in a young worker and levels off (bounded)."""
    rng = sim.rng
    total, tc = sim.level * _logu(rng, 0.02, 0.2), _logu(rng, 5 * MINUTE, 40 * MINUTE)
    beta = rng.uniform(0.5, 1.5)
    return lambda p: total * (1 - (1 + np.maximum(p.tau - p.ready, 0) / tc) ** -beta)


POOL: dict[str, Callable[[Sim], Component]] = {
    "activation": activation,
    "request_size": request_size,
    "lru": lru,
    "torch": torch_alloc,
    "arenas": arenas,
    "sawtooth": sawtooth,
    "follow": follow,
    "wander": wander,
    "lazy": lazy,
    "creep": creep,
}
BACKGROUND = ("activation", "lru", "sawtooth", "follow", "wander", "arenas", "lazy")


def _pick(rng: Rng, names: tuple[str, ...]) -> str:
    return str(names[int(rng.integers(len(names)))])


def _load_spec(rng: Rng, daily: float = 0.4, bursts: float = 0.3, **kw: Any) -> LoadSpec:
    return LoadSpec(daily=rng.random() < daily, bursts=rng.random() < bursts, **kw)


# ---------------------------------------------------------------------------------------------
# quiet families


def q_steady(rng: Rng, name: str, family: str) -> Trace:
    load = _load_spec(rng, bursts=0.0) if rng.random() < 0.6 else None
    sim = Sim(rng, _pick(rng, ANY), _quiet_duration(rng), load)
    if rng.random() < 0.25:
        sim.restart_random(int(rng.integers(1, 4)))
    comps = [wander(sim)] if rng.random() < 0.6 else []
    if rng.random() < 0.4:
        comps.append(lazy(sim))
    sim.build(comps)
    return sim.quiet_trace(name, family)


def q_burst_batch(rng: Rng, name: str, family: str) -> Trace:
    spec = _load_spec(rng, daily=0.3, bursts=1.0, burst_every=(20 * MINUTE, 3 * HOUR))
    sim = Sim(rng, _pick(rng, ("web", *ML, "tts")), _quiet_duration(rng), spec)
    comps = [activation(sim, residue=rng.uniform(0.1, 0.6))]
    if rng.random() < 0.3:
        comps.append(lazy(sim))
    if rng.random() < 0.3:
        comps.append(sawtooth(sim, amp=(0.01, 0.05)))
    sim.build(comps)
    return sim.quiet_trace(name, family)


def q_request_size(rng: Rng, name: str, family: str) -> Trace:
    sim = Sim(rng, _pick(rng, ML), _quiet_duration(rng, lo=8.0), _load_spec(rng, daily=0.5))
    comps = [request_size(sim)]
    if rng.random() < 0.5:
        comps.append(activation(sim))
    if rng.random() < 0.3:
        comps.append(lru(sim))
    sim.build(comps)
    return sim.quiet_trace(name, family)


def q_lru_cache(rng: Rng, name: str, family: str) -> Trace:
    load = _load_spec(rng, daily=0.5, bursts=0.2) if rng.random() < 0.85 else None
    sim = Sim(rng, _pick(rng, ANY), _quiet_duration(rng), load)
    if rng.random() < 0.25:
        sim.restart_random(int(rng.integers(1, 3)))
    comps = [lru(sim) for _ in range(int(rng.integers(1, 4)))]
    sim.build(comps)
    return sim.quiet_trace(name, family)


def q_torch_alloc(rng: Rng, name: str, family: str) -> Trace:
    load = _load_spec(rng, daily=0.3, bursts=0.5) if rng.random() < 0.8 else None
    sim = Sim(rng, _pick(rng, ML), _quiet_duration(rng), load)
    comps = [torch_alloc(sim)]
    if rng.random() < 0.7:  # memory_reserved(): exact, whole 2 MiB pages
        sim.exact, sim.quantum = True, 2 * MiB
    else:  # the host RSS of the same process
        comps.append(POOL[_pick(rng, ("arenas", "wander", "lazy"))](sim))
    sim.build(comps)
    return sim.quiet_trace(name, family)


def q_glibc_arenas(rng: Rng, name: str, family: str) -> Trace:
    load = _load_spec(rng) if rng.random() < 0.6 else None
    sim = Sim(rng, _pick(rng, ("web", "web", "tts", "vision")), _quiet_duration(rng), load)
    comps = [arenas(sim)]
    if load is not None and rng.random() < 0.4:
        comps.append(activation(sim, residue=0.0))
    sim.build(comps)
    return sim.quiet_trace(name, family)


def q_gunicorn(rng: Rng, name: str, family: str) -> Trace:
    sim = Sim(rng, _pick(rng, ("web", "web", "tts")), _quiet_duration(rng, lo=6.0),
              _load_spec(rng, daily=0.5, bursts=0.3))  # fmt: skip
    sim.restart_gunicorn()
    comps = [creep(sim)]
    for key in ("activation", "lru", "arenas", "sawtooth"):
        if rng.random() < 0.4:
            comps.append(POOL[key](sim))
    sim.build(comps)
    return sim.quiet_trace(name, family)


def q_gc_sawtooth(rng: Rng, name: str, family: str) -> Trace:
    load = _load_spec(rng) if rng.random() < 0.6 else None
    sim = Sim(rng, _pick(rng, ANY), _quiet_duration(rng), load)
    comps = [sawtooth(sim)]
    if rng.random() < 0.35:  # gen0 fast and small, gen2 slow and big
        comps = [sawtooth(sim, (0.005, 0.03), (5, 60)), sawtooth(sim, (0.03, 0.2), (120, 1200))]
    if rng.random() < 0.3:
        comps.append(wander(sim))
    sim.build(comps)
    return sim.quiet_trace(name, family)


def q_daily_cycle(rng: Rng, name: str, family: str) -> Trace:
    dur = rng.uniform(20, 48) * HOUR
    spec = _load_spec(rng, daily=1.0, bursts=0.15, wander_sigma=(0.02, 0.12))
    sim = Sim(rng, _pick(rng, ANY), dur, spec)
    comps = [follow(sim)]
    if rng.random() < 0.4:
        comps.append(activation(sim))
    if rng.random() < 0.3:
        comps.append(lru(sim))
    sim.build(comps)
    return sim.quiet_trace(name, family)


def q_combo(rng: Rng, name: str, family: str) -> Trace:
    keys = list(rng.choice(sorted(POOL), size=int(rng.integers(2, 5)), replace=False))
    spec = _load_spec(rng, daily=0.8 if "follow" in keys else 0.3,
                      bursts=0.6 if "activation" in keys else 0.3)  # fmt: skip
    sim = Sim(rng, _pick(rng, ANY), _quiet_duration(rng), spec)
    r = rng.random()
    if r < 0.15:
        sim.restart_gunicorn()
    elif r < 0.3:
        sim.restart_random(int(rng.integers(1, 3)))
    sim.build([POOL[k](sim) for k in keys])
    return sim.quiet_trace(name, family)


# ---------------------------------------------------------------------------------------------
# leak shapes: g(t) >= 0, non-decreasing, 0 up to the onset; its scale is solved later

Shape = Callable[[Sim, float, float], Array]


def g_linear(sim: Sim, onset: float, dur: float) -> Array:
    u = np.maximum(sim.t - onset, 0.0)
    if sim.rng.random() < 0.3:  # appended in chunks: a flush every few minutes
        step = min(_logu(sim.rng, 10, 10 * MINUTE), dur / 20)
        u = np.floor(u / step) * step
    return u


def g_requests(sim: Sim, onset: float, dur: float, burst_weight: float = 0.0) -> Array:
    d = sim.dserved * (sim.t > onset) * sim.rng.lognormal(0, 0.35, sim.n)  # sizes vary
    if burst_weight > 0:  # requests in a burst (big batches, long inputs) retain more
        d = d * (1 + burst_weight * (sim.lam > 1.5 * sim.rate))
    return np.cumsum(d)


def g_requests_or_linear(sim: Sim, onset: float, dur: float) -> Array:
    if sim.has_load and sim.rng.random() < 0.5:
        return g_requests(sim, onset, dur)
    return g_linear(sim, onset, dur)


def g_accel(sim: Sim, onset: float, dur: float) -> Array:
    rng, u = sim.rng, np.maximum(sim.t - onset, 0.0)
    r = rng.random()
    if r < 0.45:
        return (u / dur) ** rng.uniform(1.3, 2.5)
    if r < 0.75 or not sim.has_load:
        return np.expm1(u / (dur / rng.uniform(1.5, 4.0)))
    n = np.cumsum(sim.dserved * (sim.t > onset))  # a list whose elements grow with the count
    return n * n


def g_decel(sim: Sim, onset: float, dur: float) -> Array:
    rng, u = sim.rng, np.maximum(sim.t - onset, 0.0)
    r = rng.random()
    if r < 0.5:
        return (u / dur) ** rng.uniform(0.35, 0.75)
    if r < 0.75 and sim.has_load:
        return np.cumsum(sim.dserved * (sim.t > onset)) ** rng.uniform(0.4, 0.75)
    return np.log1p(u / (dur / _logu(rng, 5, 50)))


def g_two_rate(sim: Sim, onset: float, dur: float) -> Array:
    rng, u = sim.rng, np.maximum(sim.t - onset, 0.0)
    ratio = _logu(rng, 2, 6) if rng.random() < 0.5 else 1 / _logu(rng, 2, 6.7)
    u1 = rng.uniform(0.15, 0.75) * dur
    return np.minimum(u, u1) + ratio * np.maximum(u - u1, 0.0)


@dataclass(frozen=True)
class LeakFamily:
    shape: Shape
    profiles: tuple[str, ...] = ANY
    load: float = 0.7  # chance of a request load
    daily: float = 0.4
    bursts: float = 0.3
    forced: tuple[str, ...] = ()  # components always present
    background: int = 2  # at most this many more from BACKGROUND
    from_start: float = 0.2  # with the warm-up family, about 25 % over all leaks
    prefix: tuple[float, float] = (0.25, 12.0)  # hours of leak-free run before the onset
    slow: bool = False
    dt_range: tuple[float, float] = (1.0, 120.0)
    allocator: bool = False


def make_leak(spec: LeakFamily) -> Callable[[Rng, str, str], Trace]:
    def make(rng: Rng, name: str, family: str) -> Trace:
        dur = _onset_to_oom(rng, spec.slow)
        from_start = rng.random() < spec.from_start
        if from_start:
            pre = 0.0 if rng.random() < 0.7 else rng.uniform(1, 12) * HOUR
        else:
            pre = rng.uniform(*spec.prefix) * HOUR
        load = None
        if spec.load > 0 and rng.random() < spec.load:
            every = (
                (20 * MINUTE, 2 * HOUR) if "activation" in spec.forced else (0.5 * HOUR, 4 * HOUR)
            )
            load = _load_spec(rng, spec.daily, spec.bursts, burst_every=every)
        sim = Sim(
            rng, _pick(rng, spec.profiles), pre + 1.3 * dur + 10 * MINUTE, load, spec.dt_range
        )
        if from_start and pre > 0:  # a deploy brought the leak: it starts with the new process
            earlier = [rng.uniform(0.5 * HOUR, pre - 0.7 * HOUR)] if pre > 1.5 * HOUR else []
            sim.restart_at([*earlier[: int(rng.integers(0, 2))], pre])
            onset = float(sim.t[sim.starts[-1]])
        else:
            if pre > 1.5 * HOUR and rng.random() < 0.3:
                sim.restart_random(int(rng.integers(1, 3)), 20 * MINUTE, pre - 40 * MINUTE)
            onset = pre
        keys = list(spec.forced)
        extra = [k for k in BACKGROUND if k not in keys and (k != "activation" or load)]
        nb = int(rng.integers(0, spec.background + 1))
        keys += [str(k) for k in rng.choice(extra, size=nb, replace=False)]
        seg = 0.0
        if spec.allocator:
            comps = [torch_alloc(sim)]
            sim.exact, sim.quantum = rng.random() < 0.7, 2 * MiB
            seg = max(2 * MiB, round(sim.level * rng.uniform(0.02, 0.10) / (2 * MiB)) * 2 * MiB)
        else:
            comps = []
        comps += [POOL[k](sim) for k in keys if k != "sawtooth"]
        if "sawtooth" in keys:
            comps.append(
                sawtooth(sim, amp=(0.03, 0.2) if "sawtooth" in spec.forced else (0.01, 0.2))
            )
        sim.build(comps)
        g = spec.shape(sim, onset, dur)
        return sim.leak_trace(name, family, g, onset, dur, seg)

    return make


def _g_bursts(sim: Sim, onset: float, dur: float) -> Array:
    if sim.has_load and sim.rng.random() < 0.7:
        return g_requests(sim, onset, dur, burst_weight=_logu(sim.rng, 2, 10))
    return g_linear(sim, onset, dur)


def _g_slow(sim: Sim, onset: float, dur: float) -> Array:
    if sim.rng.random() < 0.2:
        return g_decel(sim, onset, dur)
    return g_requests_or_linear(sim, onset, dur)


def _g_warmup(sim: Sim, onset: float, dur: float) -> Array:
    r = sim.rng.random()
    if r < 0.5:
        return g_linear(sim, onset, dur)
    return g_requests(sim, onset, dur) if r < 0.8 and sim.has_load else g_two_rate(sim, onset, dur)


FAMILIES: tuple[tuple[str, str, int, Callable[[Rng, str, str], Trace]], ...] = (
    ("steady", "quiet", 12, q_steady),
    ("burst_batch", "quiet", 18, q_burst_batch),
    ("request_size", "quiet", 14, q_request_size),
    ("lru_cache", "quiet", 18, q_lru_cache),
    ("torch_alloc", "quiet", 16, q_torch_alloc),
    ("glibc_arenas", "quiet", 14, q_glibc_arenas),
    ("gunicorn", "quiet", 16, q_gunicorn),
    ("gc_sawtooth", "quiet", 16, q_gc_sawtooth),
    ("daily_cycle", "quiet", 14, q_daily_cycle),
    ("combo", "quiet", 20, q_combo),
    ("leak_request", "leak", 14,
     make_leak(LeakFamily(g_requests, load=1.0, daily=0.6, bursts=0.4, profiles=ML))),
    ("leak_constant", "leak", 10, make_leak(LeakFamily(g_linear, load=0.5))),
    ("leak_sawtooth", "leak", 10,
     make_leak(LeakFamily(g_requests_or_linear, forced=("sawtooth",), background=1))),
    ("leak_allocator", "leak", 10,
     make_leak(LeakFamily(g_requests_or_linear, profiles=ML, background=0, allocator=True))),
    ("leak_bursts", "leak", 10,
     make_leak(LeakFamily(_g_bursts, load=1.0, bursts=1.0, forced=("activation",),
                          from_start=0.0, prefix=(2.0, 12.0), background=1))),
    ("leak_slow", "leak", 10,
     make_leak(LeakFamily(_g_slow, daily=1.0, slow=True, dt_range=(30.0, 120.0)))),
    ("leak_accel", "leak", 10, make_leak(LeakFamily(g_accel))),
    ("leak_decel", "leak", 10, make_leak(LeakFamily(g_decel))),
    ("leak_two_rate", "leak", 10, make_leak(LeakFamily(g_two_rate))),
    ("leak_warmup", "leak", 10, make_leak(LeakFamily(_g_warmup, from_start=1.0))),
)  # fmt: skip


def generate(seed: int = 0, quick: bool = False) -> list[Trace]:
    """The tune_b corpus: deterministic per seed; ``quick`` keeps a quarter of each family."""
    out: list[Trace] = []
    for fi, (family, _kind, count, make) in enumerate(FAMILIES):
        for i in range(max(1, count // 4) if quick else count):
            rng = np.random.default_rng([seed, fi, i])
            out.append(make(rng, f"tune_b/{family}/{i:03d}", family))
    return out


def _summary(traces: list[Trace]) -> str:
    lines = [f"{'family':16} {'kind':5} {'n':>4} {'hours':>8} {'samples':>9}  onset->OOM h"]
    for family, kind, _count, _make in FAMILIES:
        ts = [t for t in traces if t.family == family]
        hours = sum(float(t.times[-1] - t.times[0]) / HOUR for t in ts)
        samples = sum(len(t.times) for t in ts)
        oo = [
            (t.t_oom - t.t_leak) / HOUR for t in ts if t.t_oom is not None and t.t_leak is not None
        ]
        extra = (
            f"  min {min(oo):.2f} med {float(np.median(oo)):.2f} max {max(oo):.2f}" if oo else ""
        )
        lines.append(f"{family:16} {kind:5} {len(ts):4d} {hours:8.1f} {samples:9d}{extra}")
    hours = sum(float(t.times[-1] - t.times[0]) / HOUR for t in traces)
    lines.append(
        f"{'total':16} {'':5} {len(traces):4d} {hours:8.1f} {sum(len(t.times) for t in traces):9d}"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    t0 = time.perf_counter()
    corpus = generate(quick="--quick" in sys.argv)
    print(_summary(corpus))
    print(f"generated in {time.perf_counter() - t0:.1f} s")
