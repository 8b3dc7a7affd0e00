"""Record the TUNING library of real memory traces: ``python -m benchmarks.detector.record_tune``.

A second, independent set of fourteen small real services whose traces are used only to TUNE
the growth detector; ``record_library``'s sixteen services stay an unseen test corpus. The
services here are different code with different workloads, allocator paths and leak mechanisms
(asyncio streams, numpy ETL batches, a TTL+size image cache, a thread pool backlog, pymalloc
fragmentation, lazily loaded torch models, a conv net under wandering batch sizes; leaks through
stored tracebacks, never-finished asyncio tasks, a never-flushed logging buffer, forgotten
callbacks, np.concatenate growth, a load-dependent request type and an lru_cache on a method
under a gc sawtooth); none of record_library's ``serve_*`` functions is used.

The machinery is record_library's: each service runs in its own child memory cgroup (cgroup
v1, hard limit, no swap) under an in-process load generator; the recorder samples the cgroup's
usage from outside every 1, 2, 5 or 10 s and keeps the service's cumulative request count
(printed about once a second as ``{"requests": N, "time": t}``, with ``{"marker": "ready"}`` and,
for a leak, ``{"marker": "leak"}`` at its onset). A leak sizes itself at its onset from its
cgroup's usage and limit (``Ctx.leak_chunk``) so that it is OOM-killed by the kernel about
``oom_after`` minutes later; the growth is real retained memory, only its rate was chosen.

Schedule (it fits in 100 minutes of wall time): quiet services run 95 minutes; leaks start
10-25 minutes after start and are planned to be OOM-killed 55-70 minutes after onset; a leak
not killed by 95 minutes is recorded without ``t_oom``.

Outputs in ``tests/data/traces/real_tune/``: ``NAME.csv.gz`` (``t,value,requests``) and
``NAME.json``, the format of ``record_library`` (``load_tune_library`` reads them as ``Trace``s
named ``real_tune/NAME``). ``--quick`` compresses the schedule 45x (about 2.5 minutes) into a temp
directory and prints each service's CPU share and, for a leak, when it was OOM-killed against
the compressed plan. Needs root and a writable memory cgroup.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import functools
import gc
import io
import json
import math
import random
import sys
import time
import zlib
from collections import Counter, OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.detector import record_library as _lib
from benchmarks.detector.record_library import (
    MiB,
    Spec,
    _burst_rate,
    _expected,
    _poisson,
    _torch,
)

ROOT = Path(__file__).resolve().parents[2]
OUT_DIR = ROOT / "tests" / "data" / "traces" / "real_tune"
MODULE = "benchmarks.detector.record_tune"
QUIET_MINUTES = 95.0
LEAK_MINUTES = 95.0  # a leak not killed by then is recorded without t_oom

SPECS: dict[str, Spec] = {
    "async_conns": Spec(
        "burst",
        "quiet",
        300,
        2.0,
        QUIET_MINUTES,
        "asyncio TCP server and clients over loopback; 20-160 open connections on a 35 min "
        "cycle with churn, each holding a 192 KiB connection buffer grown to its largest body",
    ),
    "etl_batches": Spec(
        "steps",
        "quiet",
        750,
        5.0,
        QUIET_MINUTES,
        "numpy ETL batch every 5-9 min (1.5-4 M rows extracted in 250 k chunks, filter, "
        "argsort, join, bincount), arrays dropped after; glibc's dynamic mmap threshold decides "
        "what returns; light queries on the last summary between batches",
    ),
    "image_cache": Spec(
        "cache",
        "quiet",
        550,
        10.0,
        QUIET_MINUTES,
        "cache of zlib-decoded images (0.2-1.7 MB uint8 arrays) with 8 min TTL and a 200 MiB "
        "cap, Zipf keys under a 75 min sine load (a compressed day)",
    ),
    "pool_backlog": Spec(
        "burst",
        "quiet",
        600,
        1.0,
        QUIET_MINUTES,
        "ThreadPoolExecutor of 3 workers (~1 s of I/O per job); 4 load bursts above its "
        "capacity grow a backlog of queued 100 KiB-1 MiB payloads, which then drains",
    ),
    "pymalloc_frag": Spec(
        "allocator",
        "quiet",
        350,
        10.0,
        QUIET_MINUTES,
        "bursts of 40-200 k small dicts aggregated and freed; 1 in ~500 survives in a bounded "
        "recent deque, pinning pymalloc arenas at the high-water of recent bursts",
    ),
    "lazy_models": Spec(
        "steps",
        "quiet",
        650,
        2.0,
        QUIET_MINUTES,
        "torch service lazily loading 3 embedding models (60-140 MiB) at random times in its "
        "first hour: step-ups that are not leaks",
    ),
    "torch_batches": Spec(
        "allocator",
        "quiet",
        750,
        5.0,
        QUIET_MINUTES,
        "small torch conv net, batch every 2 s whose size wanders (log random walk 1-24), "
        "feature maps held 30 s, 1 batch in 250 of huge 512 px inputs: allocator high-water",
    ),
    "leak_tracebacks": Spec(
        "linear",
        "leak",
        500,
        5.0,
        LEAK_MINUTES,
        "CSV import service; from onset a pricing upstream times out on ~20% of imports and the "
        "handler keeps (time, exception) in an error log, whose tracebacks keep the frames and "
        "their locals (body, text, parsed rows) alive",
        onset=12.0,
        oom_after=62.0,
        margin_mib=15.0,
    ),
    "leak_async_tasks": Spec(
        "linear",
        "leak",
        450,
        2.0,
        LEAK_MINUTES,
        "asyncio message sender; each message waits in a background task for its ack; from "
        "onset the backend never acks 'batch' messages (30%), so their tasks and payloads wait "
        "forever",
        onset=20.0,
        oom_after=58.0,
        margin_mib=10.0,
    ),
    "leak_log_records": Spec(
        "linear",
        "leak",
        400,
        10.0,
        LEAK_MINUTES,
        "regex/NFKC text normalisation with interned tokens and a bounded lru memo; at onset "
        "debug logging is switched on into a MemoryHandler with no target, whose buffer is "
        "never flushed nor cleared (records keep their doc, tokens and dump)",
        onset=15.0,
        oom_after=65.0,
        margin_mib=10.0,
    ),
    "leak_callbacks": Spec(
        "linear",
        "leak",
        550,
        1.0,
        LEAK_MINUTES,
        "dashboard renderer; live views subscribe a closure (holding their array.array series) "
        "to a long-lived config store and unsubscribe at the end; from onset previews (30%) "
        "never unsubscribe",
        onset=22.0,
        oom_after=56.0,
        margin_mib=15.0,
    ),
    "leak_np_concat": Spec(
        "staircase",
        "leak",
        700,
        5.0,
        LEAK_MINUTES,
        "metrics window grown once a minute by np.concatenate (realloc-like: old+new "
        "transiently) and trimmed to 10 min; from onset a client sends ms timestamps, so "
        "the trim keeps everything",
        onset=18.0,
        oom_after=60.0,
        margin_mib=30.0,
    ),
    "leak_by_type": Spec(
        "staircase",
        "leak",
        600,
        2.0,
        LEAK_MINUTES,
        "catalogue API (get/search/export) under a 50 min sine load, the export share rising "
        "with load; from onset downloaded exports are never deleted: the leak rate follows load",
        onset=10.0,
        oom_after=68.0,
        margin_mib=15.0,
    ),
    "leak_under_gc": Spec(
        "sawtooth",
        "leak",
        850,
        1.0,
        LEAK_MINUTES,
        "cyclic request objects (200 KiB payloads) under a raised gen0 threshold: a 150-300 MB "
        "gc sawtooth every 6-10 min; from onset auth requests (20%) call a functools.cache method, "
        "which keeps the request alive",
        onset=25.0,
        oom_after=57.0,
        margin_mib=30.0,
    ),
}


class Ctx(_lib.Ctx):
    """record_library's schedule clock, counter, markers and leak sizing, on this table."""

    def __init__(self, name: str, compress: float, take: int = 1) -> None:
        super().__init__(name, compress, take, specs=SPECS)


def _filled(n: int, seed: int) -> bytearray:
    """A bytearray of ``n`` written bytes (a repeated 64-byte pattern), so it is resident."""
    pattern = bytes((seed + i * 37) & 0xFF for i in range(64))
    return bytearray(pattern) * (max(64, n) // 64)


# --- quiet services -------------------------------------------------------------------------


def serve_async_conns(ctx: Ctx) -> None:
    per_conn_rate = 0.03  # requests per real second per open connection

    def target(m: float) -> int:
        return int(20 + 140 * (0.5 - 0.5 * math.cos(2 * math.pi * m / 35.0)))

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buf = _filled(192 * 1024, 17)  # the connection's receive buffer
        history: deque = deque(maxlen=64)
        try:
            while True:
                size = int.from_bytes(await reader.readexactly(8), "big")
                body = await reader.readexactly(size)
                if size > len(buf):
                    buf = bytearray(body)  # grown to the largest body seen on this connection
                else:
                    buf[:size] = body
                digest = zlib.crc32(memoryview(buf)[:size])
                history.append((time.time(), size, digest))
                reply = digest.to_bytes(4, "big") * (size // 16 + 16)
                writer.write(len(reply).to_bytes(8, "big") + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # (cancelled: the loop is shutting down)
        finally:
            writer.close()

    async def client(port: int, closing: asyncio.Event, lifetime: float) -> None:
        rng = random.Random(ctx.rng.random())
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        end = time.monotonic() + lifetime
        try:
            while time.monotonic() < end:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(closing.wait(), rng.expovariate(per_conn_rate))
                if closing.is_set():
                    break
                size = int(min(1024 * 1024, max(512, rng.lognormvariate(10.0, 1.1))))
                writer.write(size.to_bytes(8, "big") + bytes([rng.randrange(256)]) * size)
                await writer.drain()
                n = int.from_bytes(await reader.readexactly(8), "big")
                await reader.readexactly(n)
                ctx.done()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        conns: list[tuple[asyncio.Task, asyncio.Event]] = []
        ctx.marker("ready")
        while not ctx.stop.is_set():
            conns = [c for c in conns if not c[0].done()]  # churn: closed ones are replaced
            want = target(ctx.minutes())
            for _ in range(min(8, want - len(conns))):
                closing = asyncio.Event()
                lifetime = ctx.rng.expovariate(1.0 / ctx.real_seconds(8.0))
                conns.append((asyncio.create_task(client(port, closing, lifetime)), closing))
            for _ in range(min(8, len(conns) - want)):
                conns.pop(ctx.rng.randrange(len(conns)))[1].set()
            await asyncio.sleep(1.0)
        for _, closing in conns:
            closing.set()
        server.close()

    asyncio.run(main())


def _etl_batch(np, rng, dim_keys, dim_weight, rows: int):
    parts = []
    for start in range(0, rows, 250_000):  # extracted in chunks, as from a paged source
        n = min(250_000, rows - start)
        parts.append(
            (
                rng.choice(dim_keys, n),
                rng.lognormal(3.0, 1.0, n),
                rng.integers(1, 20, n, dtype=np.int32),
            )
        )
    key = np.concatenate([p[0] for p in parts])
    amount = np.concatenate([p[1] for p in parts])
    qty = np.concatenate([p[2] for p in parts])
    del parts
    keep = amount < np.quantile(amount, 0.99)  # drop outliers
    key, amount, qty = key[keep], amount[keep], qty[keep]
    order = np.argsort(key, kind="stable")
    key, amount, qty = key[order], amount[order], qty[order]
    idx = np.searchsorted(dim_keys, key)  # join with the dimension table
    value = amount * qty * dim_weight[idx]
    totals = np.bincount(idx, weights=value, minlength=len(dim_keys))
    counts = np.bincount(idx, minlength=len(dim_keys))
    return totals, counts


def serve_etl_batches(ctx: Ctx) -> None:
    import numpy as np

    rng = np.random.default_rng(ctx.rng.randrange(1 << 32))
    dim_keys = np.sort(rng.choice(1_000_000, 20_000, replace=False))
    dim_weight = rng.random(20_000)
    summary = None
    next_batch = 1.5
    ctx.marker("ready")
    while not ctx.wait(0.8):
        m = ctx.minutes()
        if m >= next_batch:
            rows = int(ctx.rng.uniform(1.5e6, 4e6))
            summary = _etl_batch(np, rng, dim_keys, dim_weight, rows)
            next_batch = m + ctx.rng.uniform(5.0, 9.0)
        elif summary is not None:  # a dashboard query on the last batch's summary
            ids = rng.integers(0, len(dim_keys), 50)
            _ = float(summary[0][ids].sum() / max(1, summary[1][ids].sum()))
        ctx.done()


def serve_image_cache(ctx: Ctx) -> None:
    import numpy as np

    rng = np.random.default_rng(ctx.rng.randrange(1 << 32))
    sources = []  # the origin store: compressed "files"
    for i in range(48):
        side = 768
        ramp = np.add.outer(np.arange(side), np.arange(side) * (1 + i % 3)) % 256
        img = np.stack([ramp, ramp.T, (ramp // 2 + i * 5) % 256], axis=-1).astype(np.uint8)
        img[rng.random(img.shape[:2]) < 0.02] = 255  # a little noise
        sources.append(zlib.compress(img.tobytes(), 1))
    cap, ttl = 200 * MiB, ctx.real_seconds(8.0)
    cache: OrderedDict[tuple, tuple[float, object]] = OrderedDict()
    held = 0
    weights = [1.0 / (k + 1) ** 0.9 for k in range(5000)]
    population = range(5000)
    last_sweep = time.monotonic()

    def rate(m: float) -> float:
        return 1.1 - 0.9 * math.cos(2 * math.pi * m / 75.0)

    def decode(image: int, side: int):
        raw = zlib.decompress(sources[image % len(sources)])
        full = np.frombuffer(raw, np.uint8).reshape(768, 768, 3)
        step = 768 // side
        out = full[::step, ::step].copy()
        out[..., image % 3] ^= np.uint8(image % 251)  # per-image variant
        return out

    ctx.marker("ready")
    while not ctx.wait(rate(ctx.minutes())):
        now = time.monotonic()
        image = ctx.rng.choices(population, weights)[0]
        key = (image, ctx.rng.choice((256, 384, 768)))
        entry = cache.get(key)
        if entry is not None and entry[0] > now:
            cache.move_to_end(key)
        else:
            if entry is not None:
                held -= cache.pop(key)[1].nbytes
            arr = decode(*key)
            cache[key] = (now + ttl, arr)
            held += arr.nbytes
            while held > cap:
                held -= cache.popitem(last=False)[1][1].nbytes
        if now - last_sweep > 10.0:
            for k in [k for k, (expiry, _) in cache.items() if expiry < now]:
                held -= cache.pop(k)[1].nbytes
            last_sweep = now
        ctx.done()


def serve_pool_backlog(ctx: Ctx) -> None:
    bursts = [(12, 2, 5, 2, 3.5), (34, 3, 3, 2, 2.5), (55, 1, 6, 3, 4.0), (78, 2, 4, 2, 3.0)]
    pool = ThreadPoolExecutor(3)

    def job(payload: bytearray, latency: float) -> None:
        time.sleep(latency)  # the downstream call
        digest = zlib.adler32(payload)
        payload[:4] = digest.to_bytes(4, "big")
        ctx.done()

    ctx.marker("ready")
    while not ctx.wait(_burst_rate(ctx.minutes(), 1.2, bursts)):
        size = int(min(1024 * 1024, max(100 * 1024, ctx.rng.lognormvariate(12.4, 0.5))))
        pool.submit(job, _filled(size, ctx.rng.randrange(256)), ctx.rng.uniform(0.6, 1.4))
    pool.shutdown(wait=False, cancel_futures=True)


def serve_pymalloc_frag(ctx: Ctx) -> None:
    survivors: deque = deque(maxlen=3000)
    ctx.marker("ready")
    next_burst = time.monotonic() + 5.0
    while not ctx.wait(1.0):  # lookups on the survivors
        if survivors:
            record = survivors[ctx.rng.randrange(len(survivors))]
            record["hits"] = record.get("hits", 0) + 1
        ctx.done()
        if time.monotonic() < next_burst:
            continue
        m = ctx.minutes()
        n = int(40_000 + 160_000 * (0.5 + 0.5 * math.sin(2 * math.pi * m / 45.0)))
        n = int(n * ctx.rng.uniform(0.8, 1.2))
        users = [f"user-{ctx.rng.randrange(50_000)}" for _ in range(64)]
        records = [
            {"id": i, "user": users[i & 63], "score": i * 0.5, "tag": f"t{i % 977}"}
            for i in range(n)
        ]
        by_user: dict[str, float] = {}
        for r in records:
            by_user[r["user"]] = by_user.get(r["user"], 0.0) + r["score"]
        keep_every = ctx.rng.randint(300, 700)
        survivors.extend(records[::keep_every])
        del records, by_user
        ctx.done()
        next_burst = time.monotonic() + ctx.rng.expovariate(1 / 40.0)


def serve_lazy_models(ctx: Ctx) -> None:
    torch = _torch()
    sizes = [60, 100, 140]
    ctx.rng.shuffle(sizes)
    plan = sorted(ctx.rng.uniform(3.0, 60.0) for _ in sizes)
    models: list = []
    ctx.marker("ready")
    while not ctx.wait(2.0):
        while plan and ctx.minutes() >= plan[0]:
            plan.pop(0)
            rows = sizes[len(models)] * MiB // (256 * 4)
            models.append((torch.nn.Embedding(rows, 256), torch.nn.Linear(256, 16)))
        with torch.inference_mode():
            for table, head in models:
                ids = torch.randint(table.num_embeddings, (64,))
                _ = head(table(ids).mean(0))
        ctx.done()


def serve_torch_batches(ctx: Ctx) -> None:
    torch = _torch()
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(4),
        torch.nn.Flatten(),
        torch.nn.Linear(256, 10),
    ).eval()
    scale = 4.0
    held: deque = deque()
    ctx.marker("ready")
    while not ctx.stop.wait(2.0):
        scale = min(24.0, max(1.0, scale * math.exp(ctx.rng.gauss(0.0, 0.12))))
        n, side = _poisson(ctx.rng, scale), 96
        if ctx.rng.random() < 1 / 250:
            n, side = max(n, 8), 512  # a client uploads full-size photos
        if n == 0:
            continue
        with torch.inference_mode():
            x = torch.rand(n, 3, side, side)
            features = net[:2](x)
            _ = net[2:](features).argmax(1)
        now = time.monotonic()
        held.append((now + 30.0, features.clone()))
        while held and held[0][0] < now:
            held.popleft()
        ctx.done(n)


# --- leaks ------------------------------------------------------------------------------------


class UpstreamTimeout(Exception):
    pass


def _csv_body(rng: random.Random, size: int) -> bytes:
    lines = [
        f"{rng.randrange(10**6)},sku-{rng.randrange(10**5)},{rng.randint(1, 9)},"
        f"{rng.uniform(1, 500):.2f},{rng.choice(('eu', 'us', 'apac'))}\n"
        for _ in range(64)
    ]
    block = "".join(lines).encode()
    return block * max(1, size // len(block))


def serve_leak_tracebacks(ctx: Ctx) -> None:
    import csv
    import tracemalloc

    error_log: list = []  # (time, exception) for a nightly report that no longer runs
    state = {"share": 0.0}
    rate, natural_mean = 1.5, 35_000

    def fetch_prices(rows: list, region: str) -> float:
        if ctx.rng.random() < state["share"]:
            raise UpstreamTimeout(f"pricing for {len(rows)} rows in {region} timed out")
        return sum(float(r[3]) * int(r[2]) for r in rows[:500])

    def import_batch(body: bytes) -> float:
        text = body.decode()
        rows = list(csv.reader(io.StringIO(text)))
        return fetch_prices(rows, rows[0][4] if rows else "eu")

    def handle(body: bytes) -> None:
        try:
            import_batch(body)
        except UpstreamTimeout as exc:
            error_log.append((time.time(), exc))

    def retained_per_byte() -> float:
        """Bytes a failed import keeps alive per body byte (measured once, at onset)."""
        probe = _csv_body(ctx.rng, 256 * 1024)
        state["share"] = 1.0
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        try:
            import_batch(probe)
        except UpstreamTimeout as exc:
            kept = exc
        else:
            kept = None
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        del kept
        return max(1.0, (after - before) / len(probe) + 1.0)  # + the body itself

    scale = None
    ctx.marker("ready")
    while not ctx.wait(rate):
        if scale is None and ctx.leak_onset():
            factor = retained_per_byte()
            per_request = ctx.leak_chunk(rate * ctx.real_seconds(ctx.spec.oom_after))
            need = per_request / factor  # body bytes to keep per request
            state["share"] = min(0.4, need / natural_mean)  # imports timing out
            scale = max(1.0, need / (state["share"] * natural_mean))  # (larger when compressed)
        size = int(ctx.rng.uniform(10_000, 60_000) * (scale or 1.0))
        handle(_csv_body(ctx.rng, size))
        ctx.done()


def serve_leak_async_tasks(ctx: Ctx) -> None:
    rate, batch_share = 3.0, 0.3

    async def main() -> None:
        loop = asyncio.get_running_loop()
        acks: dict[int, asyncio.Future] = {}
        background: set[asyncio.Task] = set()
        audit: deque = deque(maxlen=500)
        state: dict = {"chunk": None}

        async def await_ack(rid: int, payload: bytearray) -> None:
            fut = loop.create_future()
            acks[rid] = fut
            try:
                await fut  # the forgotten wait: some acks never come
                audit.append((rid, len(payload), zlib.crc32(payload[:4096])))
            finally:
                acks.pop(rid, None)

        def ack(rid: int) -> None:
            fut = acks.get(rid)
            if fut is not None and not fut.done():
                fut.set_result(True)

        async def send(rid: int, kind: str) -> None:
            size = int(ctx.rng.uniform(8_000, 64_000))
            if kind == "batch" and state["chunk"]:
                size = int(state["chunk"] * ctx.rng.uniform(0.7, 1.3))
            payload = _filled(size, rid)
            await asyncio.sleep(ctx.rng.uniform(0.01, 0.2))  # the send itself
            task = asyncio.create_task(await_ack(rid, payload))
            background.add(task)
            task.add_done_callback(background.discard)
            if not (kind == "batch" and state["chunk"]):  # from onset batch acks never come
                loop.call_later(ctx.rng.uniform(0.3, 3.0), ack, rid)
            ctx.done()

        ctx.marker("ready")
        rid = 0
        while not ctx.stop.is_set():
            await asyncio.sleep(ctx.rng.expovariate(rate))
            if state["chunk"] is None and ctx.leak_onset():
                expected = batch_share * rate * ctx.real_seconds(ctx.spec.oom_after)
                state["chunk"] = ctx.leak_chunk(expected)
            rid += 1
            kind = "batch" if ctx.rng.random() < batch_share else "order"
            t = asyncio.create_task(send(rid, kind))
            background.add(t)
            t.add_done_callback(background.discard)

    asyncio.run(main())


def serve_leak_log_records(ctx: Ctx) -> None:
    import logging
    import logging.handlers
    import re
    import unicodedata

    syllables = ["ka", "lo", "mi", "ne", "su", "ta", "ri", "po", "vé", "zu", "ß", "ﬁ", "ø", "ch"]
    words = ["".join(ctx.rng.choices(syllables, k=ctx.rng.randint(1, 4))) for _ in range(30_000)]
    weights = [1.0 / (k + 1) for k in range(len(words))]
    url = re.compile(r"https?://\S+")
    number = re.compile(r"\d+(?:[.,]\d+)*")
    punct = re.compile(r"[^\w\s<>]+")
    space = re.compile(r"\s+")

    @functools.lru_cache(maxsize=20_000)
    def norm_token(token: str) -> str:
        return sys.intern(unicodedata.normalize("NFKC", token).casefold())

    counts: Counter[str] = Counter()
    log = logging.getLogger("tune.normaliser")
    log.propagate = False
    log.setLevel(logging.INFO)
    rate, chunk = 2.0, None

    def document() -> str:
        parts = ctx.rng.choices(words, weights, k=ctx.rng.randint(60, 400))
        for _ in range(ctx.rng.randint(0, 6)):
            at = ctx.rng.randrange(len(parts))
            parts[at] = ctx.rng.choice(
                [f"https://ex.am/p/{ctx.rng.randrange(10**6)}", f"{ctx.rng.uniform(0, 1e5):,.2f}"]
            )
        return " ".join(parts) + ".  ＦＵＬＬ width, done!"

    ctx.marker("ready")
    rid = 0
    while not ctx.wait(rate):
        if chunk is None and ctx.leak_onset():
            chunk = ctx.leak_chunk(rate * ctx.real_seconds(ctx.spec.oom_after))
            # "temporarily" turned on to debug a tokenisation report; no target, so the
            # buffer is never flushed and never cleared
            log.addHandler(logging.handlers.MemoryHandler(10_000, logging.CRITICAL + 1))
            log.setLevel(logging.DEBUG)
        rid += 1
        doc = document()
        text = unicodedata.normalize("NFKC", doc)
        text = number.sub(" <num> ", url.sub(" <url> ", text))
        text = space.sub(" ", punct.sub(" ", text))
        tokens = [norm_token(t) for t in text.split(" ") if t]
        counts.update(tokens)
        if len(counts) > 30_000:
            counts = Counter(dict(counts.most_common(10_000)))
        if chunk is not None:
            joined = " ".join(tokens)
            dump = (joined * (chunk // max(1, len(joined)) + 1))[: max(0, chunk - len(doc))]
            log.debug("doc %d: %d tokens", rid, len(tokens), extra={"doc": doc, "dump": dump})
        ctx.done()


class ConfigStore:
    """A long-lived store that notifies subscribers on reload."""

    def __init__(self) -> None:
        self.version = 0
        self._listeners: list = []

    def subscribe(self, fn) -> None:
        self._listeners.append(fn)

    def unsubscribe(self, fn) -> None:
        self._listeners.remove(fn)

    def reload(self) -> None:
        self.version += 1
        for fn in list(self._listeners):
            fn(self.version)


def serve_leak_callbacks(ctx: Ctx) -> None:
    store = ConfigStore()
    rate, share, chunk = 2.0, 0.3, None
    live: deque = deque()  # (end, fn): live views, unsubscribed when they end
    last_reload = time.monotonic()
    ctx.marker("ready")
    while not ctx.wait(rate):
        now = time.monotonic()
        if chunk is None and ctx.leak_onset():
            chunk = ctx.leak_chunk(share * rate * ctx.real_seconds(ctx.spec.oom_after))
        preview = ctx.rng.random() < share
        points = ctx.rng.randint(2_000, 20_000)
        if preview and chunk is not None:
            points = int(chunk / 8 * ctx.rng.uniform(0.7, 1.3))
        phase = ctx.rng.random()
        series = array.array("d", [phase]) * points  # the view's state
        step = max(1, points // 256)
        for i in range(0, points, step):
            series[i] = math.sin(phase + i * 1e-3)
        view = {"series": series, "version": store.version}

        def on_reload(version: int, view=view) -> None:
            view["version"] = version
            view["series"][0] = float(version)

        store.subscribe(on_reload)
        page = ",".join(f"{v:.3f}" for v in series[::step])  # the rendered response
        _ = len(page)
        if not (preview and chunk is not None):  # from onset previews never unsubscribe
            live.append((now + ctx.rng.uniform(5.0, 30.0), on_reload))
        while live and live[0][0] < now:
            store.unsubscribe(live.popleft()[1])
        if now - last_reload > ctx.real_seconds(3.0):
            store.reload()
            last_reload = now
        ctx.done()


def serve_leak_np_concat(ctx: Ctx) -> None:
    import numpy as np

    cols, rate = 24, 1.5
    row_bytes = cols * 8
    rng = np.random.default_rng(ctx.rng.randrange(1 << 32))
    window = np.empty((0, cols))
    pending: list = []
    unit, rows_mean = 1.0, 160  # timestamps in s; rows per request
    last_flush = time.monotonic()
    ctx.marker("ready")
    while not ctx.wait(rate):
        n = max(1, int(rows_mean * ctx.rng.uniform(0.4, 1.6)))
        batch = np.empty((n, cols))
        batch[:, 0] = time.time() * unit
        batch[:, 1:] = rng.standard_normal((n, cols - 1))
        pending.append(batch)
        if time.monotonic() - last_flush >= ctx.real_seconds(1.0):
            window = np.concatenate([window, *pending])  # new array, old one freed
            pending.clear()
            horizon = time.time() - ctx.real_seconds(10.0)
            keep = window[:, 0] >= horizon  # ms timestamps are always "recent"
            if not keep.all():
                window = window[keep]
            _ = window[-5000:, 1:].mean(axis=0)
            last_flush = time.monotonic()
        if unit == 1.0 and ctx.leak_onset():
            usage = ctx.usage_and_limit()[0]
            expected = rate * ctx.real_seconds(ctx.spec.oom_after)
            # the window is copied on each growth: at the kill old + new are both resident
            chunk = ctx.leak_chunk(2 * expected, base_usage=usage + window.nbytes)
            unit, rows_mean = 1000.0, max(1, chunk // row_bytes)
        ctx.done()


def serve_leak_by_type(ctx: Ctx) -> None:
    import csv

    catalogue = [
        (i, f"item {i}", ctx.rng.choice(("tools", "garden", "books", "toys")), i % 97 + 0.99)
        for i in range(20_000)
    ]
    exports: dict[str, str] = {}
    downloads: deque = deque()  # (when, export id)
    leaking, chunk = False, None

    def rate(m: float) -> float:
        return 2.2 + 1.6 * math.sin(2 * math.pi * m / 50.0)

    def export_share(m: float) -> float:
        return 0.03 + 0.12 * (rate(m) - 0.6) / 3.2  # batch users export at peak hours

    page = io.StringIO()
    csv.writer(page).writerows(catalogue[:1000])
    page_text = page.getvalue()
    ctx.marker("ready")
    rid = 0
    while not ctx.wait(rate(ctx.minutes())):
        m = ctx.minutes()
        now = time.monotonic()
        rid += 1
        if not leaking and ctx.leak_onset():
            chunk = ctx.leak_chunk(
                _expected(ctx, lambda x: rate(x) * export_share(x), m, ctx.spec.oom_after)
            )
            leaking = True
        kind = "export" if ctx.rng.random() < export_share(m) else ctx.rng.choice(("get", "search"))
        if kind == "get":
            _ = json.dumps(catalogue[ctx.rng.randrange(len(catalogue))])
        elif kind == "search":
            category = ctx.rng.choice(("tools", "garden", "books", "toys"))
            start = ctx.rng.randrange(len(catalogue) - 2000)
            hits = [row for row in catalogue[start : start + 2000] if row[2] == category]
            _ = json.dumps(hits[:100])
        else:
            size = int((chunk or 200_000) * ctx.rng.uniform(0.7, 1.3))
            out = io.StringIO()
            out.write("id,name,category,price\n")
            out.write(page_text * (size // len(page_text)))
            csv.writer(out).writerows(catalogue[: (size % len(page_text)) // 30])
            export_id = f"exp-{rid}"
            exports[export_id] = out.getvalue()
            downloads.append((now + ctx.rng.uniform(5.0, 30.0), export_id))
        while downloads and downloads[0][0] < now:
            export_id = downloads.popleft()[1]
            # after the deploy at onset, cleanup uses the new id format: nothing is deleted
            exports.pop(export_id.replace("exp-", "export/") if leaking else export_id, None)
        ctx.done()


class _Span:
    def __init__(self, request: _Request, i: int) -> None:
        self.request = request  # a cycle: only the cyclic gc frees a request
        self.name = f"span-{i}"
        self.tags = {"i": i}


class _Request:
    def __init__(self, rid: int, payload: bytearray, token: bytearray | None) -> None:
        self.rid = rid
        self.payload = payload
        self.token = token
        self.headers = {f"x-h{i}": str(rid + i) for i in range(8)}
        self.spans = [_Span(self, i) for i in range(6)]

    @functools.cache  # noqa: B019 -- the leak: caches self, forever
    def fingerprint(self) -> int:
        return zlib.crc32(self.payload[:4096]) ^ hash(tuple(self.headers.values()))


def serve_leak_under_gc(ctx: Ctx) -> None:
    periods = [(0, 6.0), (30, 10.0), (55, 7.0), (75, 9.0)]  # schedule minutes between gen0 gcs
    rate, payload, share = 2.5, 200 * 1024, 0.2
    gc.disable()
    before = gc.get_count()[0]
    for i in range(50):
        _Request(i, bytearray(16), None)
    per_request = max(1.0, (gc.get_count()[0] - before) / 50)
    gc.collect()
    trough: dict = {"usage": None}

    def on_gc(phase: str, info: dict) -> None:
        if phase == "stop" and info.get("collected", 0) > 0:
            with contextlib.suppress(OSError, ValueError):
                trough["usage"] = ctx.usage_and_limit()[0]

    gc.callbacks.append(on_gc)

    def threshold(m: float) -> int:
        period = next(p for start, p in reversed(periods) if m >= start)
        return int(per_request * rate * ctx.real_seconds(period))

    gc.set_threshold(threshold(0.0), 10, 10)
    gc.enable()
    current = threshold(0.0)
    chunk = None
    rid = 0
    ctx.marker("ready")
    while not ctx.wait(rate):
        m = ctx.minutes()
        if threshold(m) != current:
            current = threshold(m)
            gc.set_threshold(current, 10, 10)
        rid += 1
        if chunk is None and ctx.leak_onset():
            expected = share * rate * ctx.real_seconds(ctx.spec.oom_after)
            amplitude = rate * ctx.real_seconds(max(p for s, p in periods if s <= 60)) * payload
            base = None if trough["usage"] is None else int(trough["usage"] + amplitude)
            chunk = max(4096, ctx.leak_chunk(expected, base) - payload)  # the request stays too
        auth = chunk is not None and ctx.rng.random() < share
        body = _filled(int(payload * ctx.rng.uniform(0.8, 1.2)), rid)
        request = _Request(rid, body, _filled(chunk, 3) if auth else None)
        if auth:
            request.fingerprint()
        else:
            _ = zlib.crc32(request.payload[:4096])
        del request
        ctx.done()


# --- running and loading ------------------------------------------------------------------------


def serve(name: str, compress: float, take: int = 1) -> None:
    ctx = Ctx(name, compress, take)
    globals()[f"serve_{name}"](ctx)


def record(name: str, out_dir: Path, compress: float = 1.0, take: int = 1) -> dict:
    return _lib.record(name, out_dir, compress, take, specs=SPECS, module=MODULE)


def load_tune_library(directory: Path = OUT_DIR) -> list:
    """The tuning recordings as ``Trace``s named ``real_tune/NAME`` (an OOM-less leak left out)."""
    return _lib.load_library(directory, prefix="real_tune")


def main(argv: list[str] | None = None) -> int:
    return _lib.run_command(
        argv, module=MODULE, doc=__doc__, specs=SPECS, serve_one=serve, out_dir=OUT_DIR
    )


if __name__ == "__main__":
    sys.exit(main())
