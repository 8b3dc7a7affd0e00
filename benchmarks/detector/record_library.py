"""Record a library of real memory traces: ``python -m benchmarks.detector.record_library``.

Sixteen small services, each real code doing real work (torch CPU tensors, numpy, bytes, dicts,
threads, glibc malloc, forked workers) under an in-process load generator with a real load
pattern, run concurrently, each in its own child memory cgroup with a hard limit (see
``record._make_cgroup``). From outside, the recorder samples the cgroup's usage every 1, 2, 5 or
10 s (it varies by recording) until the service is SIGKILLed by the memcg OOM killer (the leaks)
or its time is up (the quiet ones), and keeps the service's latest cumulative request count,
which the service prints on stdout about once a second as ``{"requests": N, "time": t}``, with
``{"marker": "ready"}`` and, for a leak, ``{"marker": "leak"}`` at its onset.

A leak sizes itself at its onset: it reads its cgroup's usage and limit and chooses the bytes it
retains per request so that, at the load it expects, the headroom (less a margin for its own
sawtooth or bursts) is used up about ``oom_after`` minutes later. The growth itself is real
retained memory; only its rate was chosen, as the brief of these recordings asks (onset 15–35
min after start, 60–90 min from onset to the OOM kill).

Outputs, per recording, in ``tests/data/traces/real/``: ``NAME.csv.gz`` (``t,value,requests``,
appended every minute as a gzip member, so an interrupted batch leaves usable data; while it
runs, ``NAME.json.part`` holds the metadata so far) and, at the end, ``NAME.json`` with the
fields of ``tests/data/traces/*.json``. ``load_library`` reads them as ``Trace``s.

``--take N`` (N > 1) records the same services again as ``NAME_takeN``: another seed for
every random draw (arrivals, sizes, keys, workers' budgets), the sampling interval moved one
step along 1, 2, 5, 10 s per take, and the leak sized afresh at its onset from the usage it
finds. The library grows by independent runs of the same code without anyone choosing their
outcomes.

``--quick`` runs every service with its schedule compressed 45× (about 3 minutes) into a temp
directory, and prints each one's CPU share and, for a leak, when it was OOM-killed against the
compressed plan. Needs root and a writable memory cgroup.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gzip
import importlib.metadata
import json
import math
import os
import random
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT_DIR = ROOT / "tests" / "data" / "traces" / "real"
MiB = 1024 * 1024
QUICK_COMPRESS = 45.0
FLUSH_SECONDS = 60.0


@dataclass(frozen=True)
class Spec:
    family: str
    kind: str  # "leak" or "quiet"
    limit_mib: int
    interval: float  # sampling interval, seconds
    minutes: float  # how long it runs unless OOM-killed first
    about: str
    onset: float | None = None  # minutes after start (leaks)
    oom_after: float | None = None  # planned minutes from onset to the OOM kill (leaks)
    margin_mib: float = 40.0  # headroom kept for the service's own swings (leaks)
    env: tuple[tuple[str, str], ...] = ()


QUIET_MINUTES = 135.0
LEAK_MINUTES = 135.0  # a leak not killed by then is recorded without t_oom
MMAP_64K = (("MALLOC_MMAP_THRESHOLD_", "65536"),)

SPECS: dict[str, Spec] = {
    "burst_batching": Spec(
        "burst",
        "quiet",
        800,
        2.0,
        QUIET_MINUTES,
        "torch encoder service; Poisson requests batched every 0.5 s (batch grows with load), "
        "results streamed to clients for 45 s; load rises into three bursts held 20-38 min",
    ),
    "size_shift": Spec(
        "steps",
        "quiet",
        500,
        1.0,
        QUIET_MINUTES,
        "numpy service whose request sizes change in phases (short 64 KiB, long ~1.2 MiB, "
        "back), results held 20 s: the working set steps up and down",
    ),
    "lru_small": Spec(
        "cache",
        "quiet",
        350,
        5.0,
        QUIET_MINUTES,
        "bytes LRU of 300 entries (~120 KiB) under Zipf keys: full within minutes",
    ),
    "lru_large": Spec(
        "cache",
        "quiet",
        850,
        10.0,
        QUIET_MINUTES,
        "bytes LRU of 3500 entries (~120 KiB) over 7000 uniform keys at 1.2 req/s: fills "
        "sublinearly over ~65 min, then flat",
    ),
    "thread_arenas": Spec(
        "allocator",
        "quiet",
        600,
        2.0,
        QUIET_MINUTES,
        "16 threads allocating and freeing 4 KiB-4 MiB buffers held for 1-20 s, load on a "
        "40 min cycle: glibc per-thread arenas ratchet, then hold",
    ),
    "worker_recycling": Spec(
        "sawtooth",
        "quiet",
        800,
        1.0,
        QUIET_MINUTES,
        "pre-fork master with 4 forked workers, each growing a memo cache per request and "
        "replaced after 600+-200 requests (gunicorn max_requests style)",
    ),
    "gc_sawtooth": Spec(
        "sawtooth",
        "quiet",
        650,
        5.0,
        QUIET_MINUTES,
        "cyclic request garbage (100 KiB payloads) with gc disabled and gc.collect every "
        "3, 8, 15, 5 then 2 min; MALLOC_MMAP_THRESHOLD_=65536 so frees return memory",
        env=MMAP_64K,
    ),
    "torch_allocator": Spec(
        "allocator",
        "quiet",
        750,
        2.0,
        QUIET_MINUTES,
        "torch attention over heavy-tailed sequence lengths (16-1536) and batch sizes: new "
        "peak shapes step the malloc high-water up, rarely",
    ),
    "session_ttl": Spec(
        "burst",
        "quiet",
        450,
        10.0,
        QUIET_MINUTES,
        "session store with 10 min idle expiry under a 90 min sinusoidal load",
    ),
    "steady_json": Spec(
        "steady",
        "quiet",
        350,
        5.0,
        QUIET_MINUTES,
        "JSON API: parse, transform, serialize ~20-80 KiB bodies; bounded stats window",
    ),
    "leak_per_request": Spec(
        "staircase",
        "leak",
        750,
        2.0,
        LEAK_MINUTES,
        "torch encoder under bursty load; after onset every request's output tensor is also "
        "appended to a debug history (growth follows load)",
        onset=20.0,
        oom_after=75.0,
        margin_mib=60.0,
    ),
    "leak_slow_threads": Spec(
        "linear",
        "leak",
        550,
        5.0,
        LEAK_MINUTES,
        "12 request threads with transient buffers; after onset each thread appends a buffer "
        "per request to a thread-local trace list that is never cleared",
        onset=30.0,
        oom_after=80.0,
        margin_mib=60.0,
    ),
    "leak_lru_bug": Spec(
        "cache",
        "leak",
        650,
        10.0,
        LEAK_MINUTES,
        "LRU of 1200 user entries (full in ~10 min); from onset 15% of requests are tenant "
        "keys that the eviction pass and size count skip",
        onset=25.0,
        oom_after=70.0,
        margin_mib=30.0,
    ),
    "leak_sawtooth": Spec(
        "sawtooth",
        "leak",
        650,
        1.0,
        LEAK_MINUTES,
        "gc sawtooth (gc disabled, collect every 3-6 min, 150 KiB payloads); from onset one "
        "request in ten registers a listener that keeps its graph alive",
        onset=15.0,
        oom_after=85.0,
        margin_mib=5.0,
        env=MMAP_64K,
    ),
    "leak_workers": Spec(
        "sawtooth",
        "leak",
        750,
        2.0,
        LEAK_MINUTES,
        "pre-fork master with 3 recycling workers; from onset the master keeps every "
        "request's trace record the workers send it",
        onset=35.0,
        oom_after=65.0,
        margin_mib=120.0,
    ),
    "leak_torch_cache": Spec(
        "linear",
        "leak",
        700,
        5.0,
        LEAK_MINUTES,
        "torch TTS service (embedding, conv vocoder); from onset one request in four is a "
        "personalised prompt whose audio lands in an unbounded dict keyed by the text",
        onset=18.0,
        oom_after=70.0,
        margin_mib=30.0,
    ),
}


# --- the services (each runs in its own child process) ----------------------------------------


class Ctx:
    """Schedule clock, request counter, markers and the leak sizing shared by the services."""

    def __init__(
        self, name: str, compress: float, take: int = 1, specs: dict[str, Spec] | None = None
    ) -> None:
        self.name = name
        self.spec = (SPECS if specs is None else specs)[name]
        self.compress = compress
        self.t0 = time.monotonic()
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.print_lock = threading.Lock()
        self.requests = 0
        self.rng = random.Random(zlib.crc32(_seed_text(name, take).encode()))
        signal.signal(signal.SIGTERM, lambda *_: self.stop.set())
        self.cgroup = Path(os.environ.get("DIAG_CGROUP", "/nonexistent"))
        threading.Thread(target=self._report, daemon=True).start()

    def minutes(self) -> float:
        """Schedule minutes since start (compressed in a quick run)."""
        return (time.monotonic() - self.t0) * self.compress / 60.0

    def real_seconds(self, schedule_minutes: float) -> float:
        return schedule_minutes * 60.0 / self.compress

    def done(self, n: int = 1) -> None:
        with self.lock:
            self.requests += n

    def emit(self, event: dict) -> None:
        # One write per line under a lock: print() from two threads can interleave two
        # objects on one line, which would lose a marker.
        with self.print_lock:
            sys.stdout.write(json.dumps(event) + "\n")
            sys.stdout.flush()

    def marker(self, name: str, **extra) -> None:
        self.emit({"marker": name, "time": time.time(), **extra})

    def _report(self) -> None:
        while True:
            with self.lock:
                n = self.requests
            self.emit({"requests": n, "time": time.time()})
            time.sleep(1.0)

    def wait(self, rate: float) -> bool:
        """Wait a Poisson inter-arrival at ``rate`` per real second; True when told to stop."""
        return self.stop.wait(self.rng.expovariate(max(rate, 1e-3)))

    def usage_and_limit(self) -> tuple[int, int]:
        usage = int((self.cgroup / "memory.usage_in_bytes").read_text())
        limit = int((self.cgroup / "memory.limit_in_bytes").read_text())
        return usage, limit

    def leak_onset(self) -> bool:
        return self.spec.onset is not None and self.minutes() >= self.spec.onset

    def leak_chunk(self, expected_requests: float, base_usage: int | None = None) -> int:
        """Bytes to retain per leaking request so the headroom lasts about ``oom_after``."""
        usage, limit = self.usage_and_limit()
        if base_usage is not None:
            usage = base_usage
        headroom = limit - usage - self.spec.margin_mib * MiB
        chunk = max(4096, int(headroom / max(expected_requests, 1.0)))
        self.marker("leak", usage=usage, limit=limit, chunk=chunk, expected=expected_requests)
        return chunk


def _touch(n: int, fill: int = 0xAB) -> bytes:
    return bytes([fill]) * max(1, n)  # written, so it is really resident


def _envelope(m: float, start: float, rise: float, hold: float, fall: float) -> float:
    if m < start or m > start + rise + hold + fall:
        return 0.0
    if m < start + rise:
        return (m - start) / rise
    if m < start + rise + hold:
        return 1.0
    return 1.0 - (m - start - rise - hold) / fall


def _burst_rate(m: float, base: float, bursts) -> float:
    return base + sum(peak * _envelope(m, *b) for *b, peak in bursts)


def _expected(ctx: Ctx, rate_of_minute, start: float, minutes: float) -> float:
    """Requests expected from schedule minute ``start`` for ``minutes`` (rates per real s)."""
    steps = 200
    dm = minutes / steps
    return sum(rate_of_minute(start + (i + 0.5) * dm) * ctx.real_seconds(dm) for i in range(steps))


def _torch():
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    return torch


def _encoder_service(ctx: Ctx, bursts, base: float, leak: bool) -> None:
    torch = _torch()
    model = torch.nn.Sequential(
        torch.nn.Linear(128, 256), torch.nn.GELU(), torch.nn.Linear(256, 128)
    ).eval()
    history: list = []  # the leak: a debug history nobody reads
    inflight: deque = deque()  # (expiry, tensor): results being streamed to clients
    ctx.marker("ready")
    chunk = None

    def rate(m: float) -> float:
        return _burst_rate(m, base, bursts)

    while not ctx.stop.wait(0.5):
        m = ctx.minutes()
        n = _poisson(ctx.rng, rate(m) * 0.5)
        now = time.monotonic()
        while inflight and inflight[0][0] < now:
            inflight.popleft()
        if n == 0:
            continue
        if leak and chunk is None and ctx.leak_onset():
            chunk = ctx.leak_chunk(_expected(ctx, rate, m, ctx.spec.oom_after))
        with torch.inference_mode():
            x = torch.randn(n, 48, 128)  # the batch grows with load
            y = model(x)
            for i in range(n):
                out = y[i].repeat(12, 1).flatten().clone()  # ~300 KB per request
                inflight.append((now + 45.0, out))
                if chunk is not None:
                    history.append(torch.full((chunk // 4,), float(i)))
        ctx.done(n)


def _poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def serve_burst_batching(ctx: Ctx) -> None:
    bursts = [(15, 4, 20, 3, 4.0), (48, 6, 38, 5, 8.0), (102, 3, 15, 3, 3.0)]
    _encoder_service(ctx, bursts, base=1.0, leak=False)


def serve_leak_per_request(ctx: Ctx) -> None:
    bursts = [(8, 3, 22, 3, 3.0), (45, 5, 20, 4, 5.0), (90, 3, 15, 3, 3.0)]
    _encoder_service(ctx, bursts, base=1.5, leak=True)


def serve_size_shift(ctx: Ctx) -> None:
    import numpy as np

    phases = [(0, 64), (20, 1200), (45, 64), (65, 1200), (95, 256), (110, 64)]  # KiB
    held: deque = deque()
    ctx.marker("ready")
    while not ctx.wait(3.0):
        m = ctx.minutes()
        kib = next(k for start, k in reversed(phases) if m >= start)
        n = int(kib * 1024 * ctx.rng.uniform(0.7, 1.3)) // 4
        body = np.frombuffer(_touch(n * 4, 1), dtype=np.float32).copy()
        result = np.cumsum(body) / (np.arange(n, dtype=np.float32) + 1)
        now = time.monotonic()
        held.append((now + 20.0, result))
        while held and held[0][0] < now:
            held.popleft()
        ctx.done()


def _lru_service(ctx: Ctx, capacity: int, keys, rate: float, size: int) -> None:
    cache: OrderedDict[str, bytes] = OrderedDict()
    ctx.marker("ready")
    while not ctx.wait(rate):
        key = keys()
        if key in cache:
            cache.move_to_end(key)
        else:
            cache[key] = _touch(int(size * ctx.rng.uniform(0.8, 1.2)))
            if len(cache) > capacity:
                cache.popitem(last=False)
        ctx.done()


def serve_lru_small(ctx: Ctx) -> None:
    weights = [1.0 / (k + 1) ** 1.1 for k in range(10_000)]
    population = range(10_000)

    def key() -> str:
        return f"item:{ctx.rng.choices(population, weights)[0]}"

    _lru_service(ctx, 300, key, 3.0, 120 * 1024)


def serve_lru_large(ctx: Ctx) -> None:
    _lru_service(ctx, 3500, lambda: f"doc:{ctx.rng.randrange(7000)}", 1.2, 120 * 1024)


def _buffer_thread(ctx: Ctx, rate_of_minute, leak_per_thread: dict | None) -> None:
    rng = random.Random(threading.get_ident())
    pending: deque = deque()
    trace: list[bytes] = []  # the leak (threads): a thread-local trace list never cleared
    while not ctx.stop.wait(rng.expovariate(rate_of_minute(ctx.minutes()))):
        now = time.monotonic()
        for _ in range(rng.randint(1, 4)):
            size = int(min(4 * MiB, max(4096, rng.lognormvariate(11.5, 1.3))))
            pending.append((now + rng.uniform(1, 20), _touch(size, rng.randrange(256))))
        while pending and pending[0][0] < now:
            pending.popleft()
        if leak_per_thread is not None and leak_per_thread.get("chunk"):
            trace.append(_touch(leak_per_thread["chunk"], 7))
        ctx.done()


def serve_thread_arenas(ctx: Ctx) -> None:
    def rate(m: float) -> float:
        return 0.4 * (1.0 + 0.6 * math.sin(2 * math.pi * m / 40.0))

    threads = [
        threading.Thread(target=_buffer_thread, args=(ctx, rate, None), daemon=True)
        for _ in range(16)
    ]
    for t in threads:
        t.start()
    ctx.marker("ready")
    ctx.stop.wait()


def serve_leak_slow_threads(ctx: Ctx) -> None:
    shared: dict = {}

    def rate(m: float) -> float:
        return 0.12

    threads = [
        threading.Thread(target=_buffer_thread, args=(ctx, rate, shared), daemon=True)
        for _ in range(12)
    ]
    for t in threads:
        t.start()
    ctx.marker("ready")
    while not ctx.stop.wait(0.5):
        if "chunk" not in shared and ctx.leak_onset():
            expected = 12 * _expected(ctx, rate, ctx.minutes(), ctx.spec.oom_after)
            shared["chunk"] = ctx.leak_chunk(expected)


def _prefork(ctx: Ctx, workers: int, rate: float, growth: int, max_requests: int, leak: bool):
    """A pre-fork master: forked workers serve requests and report them over a pipe; each is
    replaced after ``max_requests`` (with jitter). With ``leak`` the master keeps, from onset,
    every request's trace record (the workers send it ``chunk`` bytes of it)."""
    import multiprocessing

    import numpy as np

    mp = multiprocessing.get_context("fork")
    chunk = mp.Value("q", 0, lock=False)
    queue = mp.SimpleQueue()
    kept: list[bytes] = []
    children: dict[int, int] = {}

    def worker(seed: int) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        rng = random.Random(seed)
        memo: dict[int, np.ndarray] = {}  # lazily filled per-worker state: grows per request
        budget = max_requests + rng.randint(-max_requests // 3, max_requests // 3)
        for i in range(budget):
            time.sleep(rng.expovariate(rate))
            x = np.frombuffer(_touch(growth, i % 251), dtype=np.uint8).astype(np.float32)
            memo[i] = x[: growth // 4].copy()
            record = _touch(chunk.value, 3) if chunk.value else b""
            queue.put((seed, float(x.mean()), record))
        os._exit(0)

    def spawn() -> None:
        seed = ctx.rng.randrange(1 << 30)
        pid = os.fork()
        if pid == 0:
            try:
                worker(seed)
            finally:
                os._exit(0)
        children[pid] = seed

    def drain() -> None:
        while True:
            _, _, record = queue.get()
            if record:
                kept.append(record)
            ctx.done()

    for _ in range(workers):
        spawn()
    threading.Thread(target=drain, daemon=True).start()
    ctx.marker("ready")
    while not ctx.stop.wait(0.5):
        with contextlib.suppress(ChildProcessError):
            while True:
                pid, _ = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    break
                children.pop(pid, None)
                spawn()
        if leak and chunk.value == 0 and ctx.leak_onset():
            expected = workers * rate * ctx.real_seconds(ctx.spec.oom_after)
            chunk.value = ctx.leak_chunk(expected)
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def serve_worker_recycling(ctx: Ctx) -> None:
    _prefork(ctx, 4, 0.8, 160 * 1024, 600, leak=False)


def serve_leak_workers(ctx: Ctx) -> None:
    _prefork(ctx, 3, 0.8, 120 * 1024, 500, leak=True)


class _Node:
    __slots__ = ("__weakref__", "meta", "payload", "peer")

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.peer = self  # a cycle: only the cyclic GC frees it
        self.meta = {"id": id(self), "parts": [str(i) for i in range(20)]}


def _gc_service(ctx: Ctx, periods, payload: int, rate: float, leak: bool) -> None:
    import gc

    gc.disable()
    listeners: list = []  # the leak: listeners registered and never removed
    chunk = None
    trough = None
    last = time.monotonic()
    ctx.marker("ready")
    while not ctx.wait(rate):
        m = ctx.minutes()
        node = _Node(_touch(int(payload * ctx.rng.uniform(0.8, 1.2))))
        node.meta["peer"] = node
        if chunk is not None and ctx.rng.random() < 0.1:
            listeners.append((node, _touch(chunk, 5)))
        period = next(p for start, p in reversed(periods) if m >= start)
        if time.monotonic() - last >= ctx.real_seconds(period):
            gc.collect()
            last = time.monotonic()
            with contextlib.suppress(OSError):
                trough = ctx.usage_and_limit()[0]
        if leak and chunk is None and ctx.leak_onset():
            expected = 0.1 * rate * ctx.real_seconds(ctx.spec.oom_after)
            amplitude = rate * ctx.real_seconds(max(p for _, p in periods)) * payload
            base = None if trough is None else int(trough + amplitude)
            chunk = max(4096, ctx.leak_chunk(expected, base) - payload)  # the node stays too
        del node
        ctx.done()


def serve_gc_sawtooth(ctx: Ctx) -> None:
    _gc_service(ctx, [(0, 3), (25, 8), (55, 15), (85, 5), (105, 2)], 100 * 1024, 2.0, False)


def serve_leak_sawtooth(ctx: Ctx) -> None:
    _gc_service(ctx, [(0, 4), (30, 6), (60, 3), (90, 5)], 150 * 1024, 2.0, True)


def serve_torch_allocator(ctx: Ctx) -> None:
    torch = _torch()
    d = 64
    wq, wk, wv = (torch.randn(d, d) / d**0.5 for _ in range(3))
    held: deque = deque()
    ctx.marker("ready")
    while not ctx.wait(1.0):
        length = int(min(1536, max(16, ctx.rng.paretovariate(1.3) * 24)))
        batch = ctx.rng.choice([1, 1, 1, 2, 4])
        with torch.inference_mode():
            x = torch.randn(batch, length, d)
            q, k, v = x @ wq, x @ wk, x @ wv
            attn = torch.softmax(q @ k.transpose(1, 2) / d**0.5, dim=-1)
            out = (attn @ v).clone()
        now = time.monotonic()
        held.append((now + 10.0, out))
        while held and held[0][0] < now:
            held.popleft()
        ctx.done()


def serve_session_ttl(ctx: Ctx) -> None:
    sessions: dict[int, tuple[float, dict]] = {}
    ttl = 600.0
    last_sweep = time.monotonic()
    ctx.marker("ready")

    def rate(m: float) -> float:
        return 1.5 + 1.2 * math.sin(2 * math.pi * m / 90.0)

    while not ctx.wait(rate(ctx.minutes())):
        now = time.monotonic()
        active = [k for k, _ in zip(sessions, range(50), strict=False)]
        if active and ctx.rng.random() < 0.6:
            key = ctx.rng.choice(active)
            sessions[key][1]["hits"] += 1
            sessions[key] = (now, sessions.pop(key)[1])
        else:
            key = ctx.rng.randrange(1 << 40)
            state = {"hits": 1, "cart": [ctx.rng.random() for _ in range(500)]}
            state["blob"] = _touch(ctx.rng.randint(20_000, 80_000), key % 256)
            sessions[key] = (now, state)
        if now - last_sweep > 30.0:
            horizon = now - ctx.real_seconds(ttl / 60.0)
            for k in [k for k, (seen, _) in sessions.items() if seen < horizon]:
                del sessions[k]
            last_sweep = now
        ctx.done()


def serve_steady_json(ctx: Ctx) -> None:
    window: deque = deque(maxlen=5000)
    histogram: dict[str, int] = {}
    ctx.marker("ready")
    while not ctx.wait(4.0):
        items = ctx.rng.randint(150, 600)
        body = json.dumps(
            {
                "user": ctx.rng.randrange(10**6),
                "items": [
                    {
                        "sku": f"s{ctx.rng.randrange(10**5)}",
                        "qty": ctx.rng.randint(1, 9),
                        "note": "x" * ctx.rng.randint(20, 100),
                    }
                    for _ in range(items)
                ],
            }
        )
        request = json.loads(body)
        total = sum(i["qty"] for i in request["items"])
        response = json.dumps({"ok": True, "total": total, "echo": request["items"][:50]})
        window.append((time.time(), len(body), len(response)))
        bucket = f"{len(body) // 10_000}"
        histogram[bucket] = histogram.get(bucket, 0) + 1
        ctx.done()


def serve_leak_lru_bug(ctx: Ctx) -> None:
    capacity, rate, share = 1200, 3.0, 0.15
    cache: OrderedDict[str, bytes] = OrderedDict()
    users = 0  # the bug: only user entries are counted, and only they are evicted
    chunk = None
    ctx.marker("ready")
    while not ctx.wait(rate):
        if ctx.leak_onset() and chunk is None:
            chunk = ctx.leak_chunk(share * rate * ctx.real_seconds(ctx.spec.oom_after))
        if chunk is not None and ctx.rng.random() < share:
            key, size = f"tenant:{ctx.rng.randrange(1 << 40)}", chunk
        else:
            key, size = f"user:{ctx.rng.randrange(2000)}", 100 * 1024
        if key in cache:
            cache.move_to_end(key)
        else:
            cache[key] = _touch(size)
            if key.startswith("user:"):
                users += 1
            while users > capacity:
                victim = next(k for k in cache if k.startswith("user:"))
                del cache[victim]
                users -= 1
        ctx.done()


def serve_leak_torch_cache(ctx: Ctx) -> None:
    torch = _torch()
    embed = torch.nn.Embedding(20_000, 256)
    to_mel = torch.nn.Linear(256, 80)
    vocoder = torch.nn.Sequential(
        torch.nn.ConvTranspose1d(80, 32, 8, stride=4, padding=2),
        torch.nn.Tanh(),
        torch.nn.ConvTranspose1d(32, 16, 8, stride=4, padding=2),
        torch.nn.Tanh(),
        torch.nn.ConvTranspose1d(16, 1, 16, stride=8, padding=4),
    ).eval()

    def synthesize(text: str, frames: int):
        ids = torch.tensor([hash(text + str(i)) % 20_000 for i in range(frames)])
        with torch.inference_mode():
            mel = to_mel(embed(ids)).T.unsqueeze(0)
            return vocoder(mel).flatten().clone()

    canned = [f"canned prompt {i}" for i in range(40)]
    cache: OrderedDict[str, object] = OrderedDict()
    personal: dict[str, object] = {}  # the bug: keyed by unique text, never evicted
    rate, share, chunk = 2.0, 0.25, None
    ctx.marker("ready")
    while not ctx.wait(rate):
        if chunk is None and ctx.leak_onset():
            chunk = ctx.leak_chunk(share * rate * ctx.real_seconds(ctx.spec.oom_after))
        if chunk is not None and ctx.rng.random() < share:
            text = f"hello user {ctx.requests}, your order is ready"
            personal[text] = synthesize(text, max(1, chunk // (4 * 128)))
        else:
            text = ctx.rng.choice(canned)
            if text in cache:
                cache.move_to_end(text)
            else:
                cache[text] = synthesize(text, 250)
                if len(cache) > 64:
                    cache.popitem(last=False)
        ctx.done()


def serve(name: str, compress: float, take: int = 1) -> None:
    ctx = Ctx(name, compress, take)
    globals()[f"serve_{name}"](ctx)


# --- the recorder (runs here) ---------------------------------------------------------------


def _cpu_ticks(cgroup: Path, seen: dict[int, int]) -> None:
    """utime+stime of every process in the cgroup, kept per pid (dead ones keep their last)."""
    with contextlib.suppress(OSError):
        for line in (cgroup / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = Path(f"/proc/{line}/stat").read_text()
                fields = stat.rsplit(")", 1)[1].split()
                seen[int(line)] = int(fields[11]) + int(fields[12])


def _oom_kills(cgroup: Path) -> int:
    for line in (cgroup / "memory.oom_control").read_text().splitlines():
        if line.startswith("oom_kill "):
            return int(line.split()[1])
    return 0


INTERVALS = (1.0, 2.0, 5.0, 10.0)


def _seed_text(name: str, take: int) -> str:
    return name if take == 1 else f"{name}/take{take}"


def take_name(name: str, take: int) -> str:
    """The recording's name: the service's for the first take, ``NAME_takeN`` after."""
    return name if take == 1 else f"{name}_take{take}"


def take_interval(spec: Spec, take: int) -> float:
    """The sampling interval of a take: the spec's, moved ``take - 1`` steps along INTERVALS."""
    return INTERVALS[(INTERVALS.index(spec.interval) + take - 1) % len(INTERVALS)]


def record(
    service: str,
    out_dir: Path,
    compress: float = 1.0,
    take: int = 1,
    specs: dict[str, Spec] | None = None,
    module: str = "benchmarks.detector.record_library",
) -> dict:
    """Record one service; ``specs`` and ``module`` (whose ``--serve`` runs it) let another
    module record its own services with this recorder."""
    from benchmarks.detector.record import _make_cgroup

    spec = (SPECS if specs is None else specs)[service]
    name = take_name(service, take)
    limit = spec.limit_mib * MiB
    cgroup, version = _make_cgroup(f"diaglib_{name}", limit)
    if version != 1:
        raise SystemExit("record_library reads cgroup v1 files (memory.usage_in_bytes)")
    limit_read = int((cgroup / "memory.limit_in_bytes").read_text())
    usage_file = cgroup / "memory.usage_in_bytes"
    interval = take_interval(spec, take)
    interval = interval if compress == 1.0 else max(0.5, interval / 5)
    duration = spec.minutes * 60.0 / compress
    markers: dict[str, dict] = {}
    latest = {"requests": 0}
    wall0 = time.time()
    env = dict(os.environ, DIAG_CGROUP=str(cgroup), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    env.update(spec.env)
    service = (
        f"{shlex.quote(sys.executable)} -m {module} "
        f"--serve {service} --take {take} --compress {compress}"
    )
    procs = shlex.quote(str(cgroup / "cgroup.procs"))
    child = subprocess.Popen(
        ["/bin/sh", "-c", f"echo $$ > {procs} && exec {service}"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )

    def read_stdout() -> None:
        assert child.stdout is not None
        decoder = json.JSONDecoder()
        for line in child.stdout:
            at = 0
            while at < len(line.rstrip()):  # tolerant of two objects on one line
                try:
                    event, at = decoder.raw_decode(line, at)
                except ValueError:
                    break
                with contextlib.suppress(KeyError, TypeError, ValueError, AttributeError):
                    if "marker" in event:
                        markers[event["marker"]] = dict(event, t=event["time"] - wall0)
                    elif "requests" in event:
                        latest["requests"] = int(event["requests"])

    reader = threading.Thread(target=read_stdout, daemon=True)
    reader.start()
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / f"{name}.csv.gz"
    part_path = out_dir / f"{name}.json.part"
    csv_path.unlink(missing_ok=True)
    (out_dir / f"{name}.json").unlink(missing_ok=True)
    with gzip.open(csv_path, "at", newline="") as f:
        csv.writer(f).writerow(["t", "value", "requests"])
    rows: list[tuple[float, int, int]] = []
    pending: list[tuple[float, int, int]] = []
    cpu: dict[int, int] = {}
    last_flush = time.monotonic()
    meta: dict = {}

    def flush() -> None:
        nonlocal last_flush
        if pending:
            with gzip.open(csv_path, "at", newline="") as f:
                csv.writer(f).writerows(pending)
            pending.clear()
        last_flush = time.monotonic()

    tick = time.monotonic()
    while time.time() - wall0 < duration and child.poll() is None:
        try:
            usage = int(usage_file.read_text())
        except (OSError, ValueError):
            break
        if child.poll() is not None or _oom_kills(cgroup):
            # Killed between the poll and the read: that sample is not the service's. An OOM
            # kill of one process of a multi-process service (a worker) ends it too, as a
            # container's would: the rest is SIGKILLed below.
            break
        row = (round(time.time() - wall0, 3), usage, latest["requests"])
        rows.append(row)
        pending.append(row)
        _cpu_ticks(cgroup, cpu)
        if time.monotonic() - last_flush >= FLUSH_SECONDS:
            flush()
            meta = _meta(
                name,
                spec,
                limit_read,
                rows,
                markers,
                version,
                interval,
                None,
                0,
                cpu,
                wall0,
                compress,
                final=False,
                take=take,
                module=module,
            )
            part_path.write_text(json.dumps(meta, indent=2) + "\n")
        tick += interval
        time.sleep(max(0.0, tick - time.monotonic()))
    flush()
    if child.poll() is None:
        child.send_signal(signal.SIGKILL if _oom_kills(cgroup) else signal.SIGTERM)
    try:
        returncode = child.wait(timeout=60)
    except subprocess.TimeoutExpired:
        child.kill()
        returncode = child.wait()
    reader.join(timeout=5)
    oom_kills = _oom_kills(cgroup)
    for _ in range(50):  # orphaned workers of a killed master, all started here
        left = (cgroup / "cgroup.procs").read_text().split()
        if not left:
            break
        for pid in left:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        time.sleep(0.2)
    max_usage = int((cgroup / "memory.max_usage_in_bytes").read_text())
    with contextlib.suppress(OSError):
        cgroup.rmdir()
    meta = _meta(
        name,
        spec,
        limit_read,
        rows,
        markers,
        version,
        interval,
        returncode,
        oom_kills,
        cpu,
        wall0,
        compress,
        final=True,
        take=take,
        module=module,
    )
    meta["recorded"]["cgroup_max_usage"] = max_usage
    (out_dir / f"{name}.json").write_text(json.dumps(meta, indent=2) + "\n")
    part_path.unlink(missing_ok=True)
    return meta


def _meta(
    name,
    spec,
    limit,
    rows,
    markers,
    version,
    interval,
    returncode,
    oom_kills,
    cpu,
    wall0,
    compress,
    final,
    take=1,
    module="benchmarks.detector.record_library",
) -> dict:
    killed = returncode == -signal.SIGKILL and oom_kills > 0
    elapsed = rows[-1][0] if rows else 0.0
    cpu_s = sum(cpu.values()) / os.sysconf("SC_CLK_TCK")
    leak = markers.get("leak", {})
    if not final:
        exit_text = "still running"
    elif killed:
        exit_text = "SIGKILL by the memcg OOM killer"
    else:
        exit_text = f"exit status {returncode}"
    return {
        "name": name,
        "family": spec.family,
        "kind": spec.kind,
        "limit": limit,
        "t_leak": leak.get("t") if spec.kind == "leak" else None,
        "t_oom": elapsed if killed and spec.kind == "leak" else None,
        "starts": [0.0],
        "recorded": {
            "how": f"python -m {module}"
            + (f" --take {take}" if take != 1 else "")
            + (f" --quick (schedule compressed {compress:g}x)" if compress != 1.0 else ""),
            "value": "the cgroup's memory.usage_in_bytes, read from outside",
            "requests": "the service's cumulative request count, latest line before the sample",
            "sample_interval_s": interval,
            "cgroup": f"v{version} child memory cgroup, limit {limit} bytes, no swap",
            "exit": exit_text,
            "oom_kills": oom_kills,
            "service": spec.about,
            "env": dict(spec.env),
            "planned": {
                "minutes": spec.minutes,
                "onset_min": spec.onset,
                "onset_to_oom_min": spec.oom_after,
                "margin_mib": spec.margin_mib,
            },
            "leak_sizing": {
                k: leak[k] for k in ("usage", "limit", "chunk", "expected") if k in leak
            }
            or None,
            "t_ready": markers.get("ready", {}).get("t"),
            "requests_total": rows[-1][2] if rows else 0,
            "cpu_seconds": round(cpu_s, 2),
            "cpu_share_of_core": round(cpu_s / elapsed, 4) if elapsed else None,
            "samples": len(rows),
            "torch": _version("torch"),
            "numpy": _version("numpy"),
            "python": sys.version.split()[0],
            "date": time.strftime("%Y-%m-%d", time.gmtime(wall0)),
            "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall0)),
        },
    }


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


# --- the loader -----------------------------------------------------------------------------


def load_library(directory: Path = OUT_DIR, prefix: str = "real2") -> list:
    """The recordings in ``directory`` as ``Trace``s (source "real", names "PREFIX/NAME").

    A leak that was not OOM-killed (no ``t_oom``) is left out: a leak trace ends at its OOM.
    Recordings still running (only ``NAME.json.part``) are left out too."""
    import numpy as np

    from benchmarks.detector.traces import recorded_trace

    out = []
    for sidecar in sorted(Path(directory).glob("*.json")):
        meta = json.loads(sidecar.read_text())
        if meta["kind"] == "leak" and meta.get("t_oom") is None:
            continue
        data = sidecar.with_name(f"{meta['name']}.csv.gz")
        with gzip.open(data, "rt", newline="") as f:
            rows = [
                (float(r["t"]), float(r["value"]), float(r["requests"]))
                for r in csv.DictReader(f)
                if r.get("requests") not in (None, "")
            ]
        if not rows:
            continue
        times, values, requests = (np.array(column) for column in zip(*rows, strict=True))
        out.append(recorded_trace(prefix, meta, times, values, requests))
    return out


# --- command line ---------------------------------------------------------------------------


def record_all(
    names: list[str],
    out: Path,
    compress: float,
    take: int = 1,
    specs: dict[str, Spec] | None = None,
    module: str = "benchmarks.detector.record_library",
) -> None:
    """Record ``names`` side by side (``record``), printing a JSON summary line for each as it
    ends: how it ended, against the plan for a leak, its CPU share and its peak."""
    table = SPECS if specs is None else specs

    def one(name: str) -> dict:
        try:
            return record(name, out, compress, take, specs, module)
        except Exception as exc:  # one failing recording must not stop the others
            return {"name": take_name(name, take), "error": repr(exc)}

    with ThreadPoolExecutor(len(names)) as pool:
        for name, meta in zip(names, pool.map(one, names), strict=True):
            spec = table[name]
            rec = meta.get("recorded", {})
            planned = None
            if spec.onset is not None and spec.oom_after is not None:
                planned = round((spec.onset + spec.oom_after) * 60.0 / compress, 1)
            summary = {
                "name": meta["name"],
                "error": meta.get("error"),
                "kind": spec.kind,
                "limit_mib": spec.limit_mib,
                "t_leak": meta.get("t_leak"),
                "t_oom": meta.get("t_oom"),
                "t_oom_planned": planned,
                "exit": rec.get("exit"),
                "oom_kills": rec.get("oom_kills"),
                "cpu_share": rec.get("cpu_share_of_core"),
                "requests": rec.get("requests_total"),
                "max_mib": (rec.get("cgroup_max_usage") or 0) // MiB,
                "leak_sizing": rec.get("leak_sizing"),
            }
            print(json.dumps(summary), flush=True)


def run_command(
    argv: list[str] | None,
    *,
    module: str,
    doc: str | None,
    specs: dict[str, Spec],
    serve_one: Callable[[str, float, int], None],
    out_dir: Path,
    take_help: str = argparse.SUPPRESS,
) -> int:
    """A recorder's command line: record ``specs`` (all, or ``--only`` some) with ``record_all``
    into ``out_dir``, or, for ``--quick``, 45x compressed into a temp dir; ``--serve`` runs one
    service (the child that ``record`` starts). Both recorders' ``main``."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=doc)
    parser.add_argument("--only", nargs="*", choices=list(specs), help="record only these")
    parser.add_argument("--quick", action="store_true", help="compressed check, to a temp dir")
    parser.add_argument("--out", type=Path, help="output directory")
    parser.add_argument("--take", type=int, default=1, help=take_help)
    parser.add_argument("--serve", choices=list(specs), help=argparse.SUPPRESS)  # the child
    parser.add_argument("--compress", type=float, default=1.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve_one(args.serve, args.compress, args.take)
        return 0
    names = args.only or list(specs)
    compress = QUICK_COMPRESS if args.quick else 1.0
    prefix = module.rsplit(".", 1)[-1] + "_"
    out = args.out or (Path(tempfile.mkdtemp(prefix=prefix)) if args.quick else out_dir)
    if args.take < 1:
        parser.error("--take counts from 1")
    print(
        json.dumps({"out": str(out), "names": names, "compress": compress, "take": args.take}),
        flush=True,
    )
    record_all(names, out, compress, args.take, specs, module)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(
        argv,
        module="benchmarks.detector.record_library",
        doc=__doc__,
        specs=SPECS,
        serve_one=serve,
        out_dir=OUT_DIR,
        take_help="record again: NAME_takeN, new seeds",
    )


if __name__ == "__main__":
    sys.exit(main())
