"""Cause, not only culprit: which kind of growth this is, with the evidence for it.

Memory that grows is not always a leak. The same RSS curve can be live objects piling up in a
holder (a leak), glibc keeping freed memory (allocator retention: ``malloc_trim`` gives it back),
PyTorch's caching allocator keeping reserved blocks (a plateau, not a leak), fragmentation of
that cache, copy-on-write of pages a pre-forked worker shares with its master, or native memory
no Python-level tool sees. Each leaves a different mark on the series the agent records; this
module reads those marks. Pure: series, holders' growth, the detector's verdicts and a traced
window's own measurements in, a ``Cause`` out.

Every cause carries a growth account (``GrowthAccount``): how fast memory grows and where that
growth goes, part by part, the parts summing to the whole.

Rates ignore the start-up: a plain dump's slopes are taken over the current regime of RSS only
(``current_regime``: an import ramp or a cache filling before the last knee is cut off), a
traced window's over the window itself. And the cause agrees with the detector: while the
agent's detector says its memory series are warming up, steady or bounded, no series-based
reading is called a leak.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from diag.detect import Verdict
from diag.units import format_bytes

Points = Sequence[tuple[float, float]]

#: A series grows when it rises at least this much per hour...
MIN_GROWTH_PER_HOUR = 16 * 1024 * 1024
#: ...and a part explains the whole when it accounts for this share of it.
EXPLAINS = 0.25
#: Holders growing this many times MIN_GROWTH_PER_HOUR are a leak whatever RSS says...
FAST_HOLDER_GROWTH = 10
#: A dump without a window judges the last ten minutes: the agent's last traced window counts
#: as evidence of them when it ended within them.
RECENT_WINDOW_SECONDS = 600.0
#: ...provided the named holder alone is at least this share of the growth: a holder that
#: grew a few percent of it is not the culprit.
FAST_HOLDER_SHARE = 0.10
#: Holders that grew at least this share of the fastest one's rate are its peers: where the
#: fastest does not explain the whole alone, they are named together, not it alone...
PEER_SHARE = 0.5
#: ...the first of them, at most.
MAX_PEERS_NAMED = 5
#: A knee in RSS is cut off when two lines fit at most this share of one line's squared error...
KNEE_FIT = 0.5
#: ...and their slopes differ by at least this share of the larger one.
KNEE_SLOPES = 0.5
#: The current regime keeps at least this many points.
REGIME_MIN_POINTS = 3
#: An account from the agent's series needs this many samples of RSS, start-up and diag's
#: own disturbances left out (a few seconds at the shortest interval, half a minute at 5 s).
ACCOUNT_MIN_POINTS = 6

#: The detector's states, as the cause reads them.
GROWING_STATES = frozenset({"growing", "leak"})
EARLY_STATES = frozenset({"insufficient_data", "warming_up"})


@dataclass
class GrowthAccount:
    """Where the growth goes, in bytes per second; the parts sum to ``total_bytes_per_second``
    (the RSS growth, plus the CUDA reserved growth on a machine where torch uses a GPU: device
    memory is not in RSS)."""

    rss_bytes_per_second: float
    owners_bytes_per_second: float
    allocator_retention_bytes_per_second: float
    cuda_reserve_bytes_per_second: float
    native_bytes_per_second: float
    #: What no part explains: the remainder. Negative when the measured parts exceed the
    #: growth (memory reused that was already resident, noise of short windows).
    unexplained_bytes_per_second: float
    by_owner: list[dict[str, Any]]
    total_bytes_per_second: float
    #: Seconds the rates were measured over, and how: ``"window"`` (a traced window's
    #: readings at its start and end) or ``"series"`` (the agent's samples, start-up cut).
    span_seconds: float
    source: str
    #: Growth of everything Python allocated (tracemalloc, during a window); None otherwise.
    python_heap_bytes_per_second: float | None = None
    #: tracemalloc's own tables during the window (diag's cost, part of ``native``).
    tracing_bytes_per_second: float | None = None
    #: What ``malloc_trim(0)`` returned to the system (``diag dump --trim``), bytes.
    trim_returned_bytes: int | None = None

    def parts(self) -> float:
        return (
            self.owners_bytes_per_second
            + self.allocator_retention_bytes_per_second
            + self.cuda_reserve_bytes_per_second
            + self.native_bytes_per_second
            + self.unexplained_bytes_per_second
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Measured:
    """A traced window's own readings, as rates over ``seconds``: RSS, glibc's in-use and
    free-retained bytes (mallinfo2), what tracemalloc traced (every Python allocation) and
    tracemalloc's own memory, and the address space mapped (VmSize). None where the reading
    was not available."""

    seconds: float
    rss: float
    malloc_in_use: float | None = None
    malloc_free: float | None = None
    python_traced: float | None = None
    tracing: float | None = None
    mapped: float | None = None


@dataclass
class Cause:
    kind: str  # leak, allocator_retention, cuda_caching_plateau, fragmentation,
    #            copy_on_write, native_growth, no_growth, bounded_growth, warming_up,
    #            unexplained, unknown
    summary: str
    evidence: list[str] = field(default_factory=list)
    growth_accounting: dict[str, Any] | None = None
    #: What a leak's summary names: one holder, or the path under which several grew
    #: together (``holders`` > 1); None where it names none.
    culprit: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def slope(points: Points) -> float | None:
    """Least-squares slope (units per second), None with fewer than 3 points."""
    if len(points) < 3:
        return None
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var <= 0:
        return None
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / var


class _Fits:
    """Least-squares lines over any run of ``points`` in constant time (prefix sums)."""

    def __init__(self, points: Points) -> None:
        t0 = points[0][0]
        self._s = [(0.0, 0.0, 0.0, 0.0, 0.0)]
        st = sv = stt = stv = svv = 0.0
        for t, v in points:
            t -= t0
            st, sv, stt, stv, svv = st + t, sv + v, stt + t * t, stv + t * v, svv + v * v
            self._s.append((st, sv, stt, stv, svv))

    def fit(self, i: int, j: int) -> tuple[float, float]:
        """(slope, squared error) of the line through points[i:j]."""
        a, b = self._s[i], self._s[j]
        n = j - i
        st, sv, stt, stv, svv = (b[k] - a[k] for k in range(5))
        sxx = stt - st * st / n
        sxy = stv - st * sv / n
        syy = svv - sv * sv / n
        if sxx <= 0:
            return 0.0, max(syy, 0.0)
        return sxy / sxx, max(syy - sxy * sxy / sxx, 0.0)


def current_regime(points: Points, min_points: int = REGIME_MIN_POINTS) -> Points:
    """The points after the last clear knee: where two lines fit far better than one and their
    slopes differ, only the later line's points are kept. This cuts off the interpreter's
    import ramp and a model's load (steep, then the service's own rate), and a cache that
    filled before it plateaued. At most two knees are cut, each keeping at least a quarter of
    the points (a sawtooth must not leave a handful); without one, all points stay."""
    for _ in range(2):
        n = len(points)
        keep = max(min_points, n // 4)
        if n < keep + 2:
            return points
        fits = _Fits(points)
        whole = fits.fit(0, n)[1]
        if whole <= 0:
            return points
        best: tuple[float, int] | None = None
        for b in range(2, n - keep + 1):
            error = fits.fit(0, b)[1] + fits.fit(b, n)[1]
            if best is None or error < best[0]:
                best = (error, b)
        assert best is not None
        error, b = best
        before, after = fits.fit(0, b)[0], fits.fit(b, n)[0]
        if error > KNEE_FIT * whole:
            return points
        if abs(before - after) < KNEE_SLOPES * max(abs(before), abs(after)):
            return points
        points = points[b:]
    return points


def _rate(series: Mapping[str, Points], name: str) -> float:
    return slope(series.get(name, ())) or 0.0


def _last(series: Mapping[str, Points], name: str) -> float | None:
    points = series.get(name, ())
    return points[-1][1] if points else None


def _per_hour(rate: float) -> str:
    return f"{format_bytes(rate * 3600)}/h"


def _per_second(rate: float) -> str:
    sign = "+" if rate >= 0 else "-"
    return f"{sign}{format_bytes(abs(rate))}/s"


def detector_state(verdicts: Mapping[str, Verdict] | None) -> tuple[str, Verdict] | None:
    """What the detector says of the memory series, as one state: ``growing`` when any of
    them grows (or leaks); else what it says of RSS (a CUDA series that appeared later may
    still be warming up); else ``warming_up`` when any is still warming up (or has too few
    samples), ``bounded`` when any rose in a bounded way, ``steady``. With the verdict that
    decided it; None without verdicts."""
    if not verdicts:
        return None
    order = (
        ("growing", GROWING_STATES),
        ("warming_up", EARLY_STATES),
        ("bounded", frozenset({"bounded_growth"})),
        ("steady", frozenset({"steady"})),
    )
    rss = verdicts.get("process_resident_memory_bytes")
    candidates = list(verdicts.values())
    if rss is not None and not any(v.state in GROWING_STATES for v in candidates):
        candidates = [rss]
    for state, states in order:
        for verdict in candidates:
            if verdict.state in states:
                return state, verdict
    return None


def account(
    series: Mapping[str, Points],
    owner_growth: Sequence[tuple[str, float]] = (),
    *,
    measured: Measured | None = None,
    device_share: Mapping[str, float] | None = None,
    trimmed_bytes: int | None = None,
) -> GrowthAccount | None:
    """The growth account. ``series`` are already cut to the span to measure over (the
    current regime, or the window); ``measured`` replaces RSS and malloc's slopes by a traced
    window's readings and adds what Python allocated meanwhile. ``device_share``: per holder,
    the share of its bytes on a GPU. None when RSS has too few points for a slope.

    The parts: live objects by owner (the census's growth per holder); allocator retention
    (the growth of what glibc keeps free, mallinfo2's ``fordblks``); the CUDA caching
    allocator's reserve (reserved minus allocated growth); native memory (growth that neither
    Python's allocations nor malloc's free lists explain: C code's own ``malloc`` and
    ``mmap``, tracemalloc's tables during a window); and the unexplained remainder. Native
    memory is only told from the Python heap when a window measured the Python heap
    (tracemalloc) or, outside one, when Python's allocated blocks are flat and the growth lies
    outside malloc; else it stays in ``unexplained``."""
    points = series.get("process_resident_memory_bytes", ())
    if measured is not None:
        rss = measured.rss
        span = measured.seconds
    else:
        fitted = slope(points) if len(points) >= ACCOUNT_MIN_POINTS else None
        if fitted is None:
            return None
        rss = fitted
        span = points[-1][0] - points[0][0]
    in_use = _rate(series, "malloc_in_use_bytes")
    free = _rate(series, "malloc_free_retained_bytes")
    if measured is not None and measured.malloc_in_use is not None:
        in_use = measured.malloc_in_use
    if measured is not None and measured.malloc_free is not None:
        free = measured.malloc_free
    reserved = _rate(series, "cuda_reserved_bytes")
    allocated = _rate(series, "cuda_allocated_bytes")
    shares = device_share or {}
    owners = sum(rate for _, rate in owner_growth)
    on_device = sum(rate * shares.get(path, 0.0) for path, rate in owner_growth)
    on_host = owners - on_device
    python = measured.python_traced if measured is not None else None
    if python is not None:
        # Python's allocations (and buffers it traces: numpy) or the owners' own measure,
        # whichever saw more (torch's CPU buffers are not traced).
        heap = max(python, on_host)
        native = max(rss - free - heap, 0.0)
        if measured is not None and measured.mapped is not None:
            # New native memory maps address space or counts in malloc's in-use bytes as
            # it is allocated; RSS beyond both is pages allocated earlier, written now.
            native = min(native, max(measured.mapped, in_use, 0.0))
    else:
        outside_malloc = rss - in_use - free
        blocks = _rate(series, "python_allocated_blocks")
        # Python's small objects live in arenas outside malloc too: only with its blocks
        # flat is growth outside malloc native.
        blocks_flat = blocks * 64 < EXPLAINS * max(outside_malloc, 0.0)
        native = max(outside_malloc - max(on_host - in_use, 0.0), 0.0) if blocks_flat else 0.0
    cuda_reserve = reserved - allocated
    total = rss + reserved
    growing = sorted((o for o in owner_growth if o[1] > 0), key=lambda o: -o[1])
    return GrowthAccount(
        rss_bytes_per_second=rss,
        owners_bytes_per_second=owners,
        allocator_retention_bytes_per_second=free,
        cuda_reserve_bytes_per_second=cuda_reserve,
        native_bytes_per_second=native,
        unexplained_bytes_per_second=total - owners - free - cuda_reserve - native,
        by_owner=[
            {
                "path": path,
                "bytes_per_second": rate,
                "share": rate / total if total > 0 else None,
            }
            for path, rate in growing
        ],
        total_bytes_per_second=total,
        span_seconds=span,
        source="window" if measured is not None else "series",
        python_heap_bytes_per_second=python,
        tracing_bytes_per_second=measured.tracing if measured is not None else None,
        trim_returned_bytes=trimmed_bytes,
    )


def _first_touch(
    measured: Measured | None,
    rss: float,
    malloc: float,
    growth: GrowthAccount,
    held: float,
    grows: float,
) -> str | None:
    """The evidence, where a traced window's RSS grew into memory allocated before it. Every
    allocation maps address space or counts in malloc's in-use bytes when it is made (a
    leak of Python objects maps arenas, C code's malloc counts); writing into pages allocated
    earlier does neither, and raises RSS alone. Calling that native growth would be a guess:
    the buffer is as often a Python object's (a BytesIO's, reallocated ahead of its writes)."""
    if measured is None or measured.mapped is None or rss < grows:
        return None
    python = growth.python_heap_bytes_per_second or 0.0
    if max(measured.mapped, malloc, python, held) >= EXPLAINS * rss:
        return None
    return (
        f"RSS {_per_hour(rss)} while the address space grew {_per_hour(measured.mapped)}, "
        f"malloc's in-use bytes {_per_hour(malloc)}, Python allocated {_per_hour(python)}"
    )


def without_steps(points: Points, disturbed: Sequence[tuple[float, float]]) -> Points:
    """``points`` less diag's own disturbances: samples inside a ``(began, ended)`` span are
    dropped, and the step across each span (a paused host catching up, an arena that keeps
    what the census used) is taken off every later sample, less what the series' own trend
    (its current regime's) would have added meanwhile, fitted again on the result three
    times: a leak keeps its rate, a bounded service gets no growth from being dumped."""
    if not disturbed or not points:
        return points
    spans = sorted(disturbed)
    kept = [(t, v) for t, v in points if not any(b <= t < e for b, e in spans)]
    out: Points = kept
    trend = 0.0
    for _ in range(3):
        adjusted: list[tuple[float, float]] = []
        offset = 0.0
        for t, v in kept:
            if adjusted:
                last_t, last_v = adjusted[-1]
                if any(last_t < b and e <= t for b, e in spans):  # a span lies between
                    offset = v - last_v - trend * (t - last_t)
            adjusted.append((t, v - offset))
        out = adjusted
        trend = slope(current_regime(out)) or 0.0  # the start-up's ramp is no trend
    return out


def _since(series: Mapping[str, Points], t: float) -> dict[str, Points]:
    return {name: [(s, v) for s, v in points if s >= t] for name, points in series.items()}


def settled(series: Mapping[str, Points]) -> dict[str, Points]:
    """Every series cut to RSS's current regime (``current_regime``), so that all rates are
    measured over the same span and none includes the start-up."""
    points = series.get("process_resident_memory_bytes", ())
    regime = current_regime(points)
    if not regime or len(regime) == len(points):
        return dict(series)
    return _since(series, regime[0][0])


def fragmentation_line(growth: GrowthAccount) -> str | None:
    """Said when malloc keeps a fair share of the growth free between retained blocks."""
    grows = MIN_GROWTH_PER_HOUR / 3600
    free = growth.allocator_retention_bytes_per_second
    rss = growth.rss_bytes_per_second
    if free < grows or rss <= 0 or free < EXPLAINS * rss:
        return None
    return (
        f"objects {_per_second(growth.owners_bytes_per_second)}, malloc keeps "
        f"{_per_second(free)} free between them (fragmentation), RSS {_per_second(rss)}"
    )


def _root_group(
    owner_growth: Sequence[tuple[str, float]],
    owner_steps: Mapping[str, Sequence[str]],
    needed: float,
) -> tuple[str, int, float] | None:
    """The deepest path, a root variable or beneath one (two steps of a chain at least: a
    module and its global, a class and its attribute), under which two or more growing
    holders together grow ``needed`` or more: (path, how many, their rate)."""
    groups: dict[tuple[str, ...], list[float]] = {}
    for path, rate in owner_growth:
        steps = owner_steps.get(path) or ()
        if rate <= 0 or len(steps) < 2:
            continue
        for depth in range(2, len(steps) + 1):
            entry = groups.setdefault(tuple(steps[:depth]), [0, 0.0])
            entry[0] += 1
            entry[1] += rate
    found = [(len(key), key, int(n), rate) for key, (n, rate) in groups.items()]
    deepest = max(
        (g for g in found if g[2] >= 2 and g[3] >= needed), key=lambda g: (g[0], g[3]), default=None
    )
    if deepest is None:
        return None
    _, key, count, rate = deepest
    return "".join(key), count, rate


def _culprit(path: str, holders: int, rate: float, whole: float) -> dict[str, Any]:
    return {
        "path": path,
        "holders": holders,
        "bytes_per_second": rate,
        "share": rate / whole if whole > 0 else None,
    }


def classify(
    series: Mapping[str, Points],
    owner_growth: Sequence[tuple[str, float]] = (),
    *,
    worker: bool = False,
    trimmed_bytes: int | None = None,
    verdicts: Mapping[str, Verdict] | None = None,
    measured: Measured | None = None,
    device_share: Mapping[str, float] | None = None,
    disturbed: Sequence[tuple[float, float]] = (),
    owner_steps: Mapping[str, Sequence[str]] | None = None,
    gc_disabled_freed: int | None = None,
    window_age: float | None = None,
) -> Cause:
    """``series``: name -> recent points (CUDA ones summed over devices); ``owner_growth``:
    (holder path, bytes per second) measured over a traced window, biggest first;
    ``owner_steps``: each holder's path as its chain's steps (root first), which groups the
    holders beneath one root variable;
    ``verdicts``: the agent's current verdicts on its memory series (None: no detector, as in
    a replay); ``measured``: the traced window's own readings, when this dump closes one;
    ``disturbed``: spans when diag's own dumps disturbed the host (see ``without_steps``);
    ``gc_disabled_freed``: the unreachable objects a dump's own collection freed where the host
    disabled the gc (``Dump.gc_disabled_freed``); ``window_age``: for a dump that borrows
    ``owner_growth`` from the agent's last traced window, the seconds since it ended."""
    if disturbed:
        series = {name: without_steps(points, disturbed) for name, points in series.items()}
    if measured is None:
        series = settled(series)
    growth = account(
        series,
        owner_growth,
        measured=measured,
        device_share=device_share,
        trimmed_bytes=trimmed_bytes,
    )
    if gc_disabled_freed is not None:
        # The dump's own collection freed the pile, so the readings across it fell: no slope
        # or verdict of them can be trusted to say the memory is not growing.
        cause = Cause(
            "leak",
            "reference cycles pile up while the gc is disabled (gc.disable()): nothing frees "
            f"them but a collection, and this dump's own freed {gc_disabled_freed:,} "
            "unreachable objects; call gc.collect() in the service, or gc.enable()",
            [f"gc disabled; {gc_disabled_freed:,} unreachable objects freed by the dump"],
        )
    else:
        cause = _classify(
            series,
            owner_growth,
            worker,
            trimmed_bytes,
            verdicts,
            measured,
            growth,
            owner_steps or {},
            window_age is not None and window_age <= RECENT_WINDOW_SECONDS,
        )
    if growth is not None:
        cause.growth_accounting = growth.to_json()
        line = fragmentation_line(growth)
        if line is not None:
            cause.evidence.append(line)
    return cause


def _classify(
    series: Mapping[str, Points],
    owner_growth: Sequence[tuple[str, float]],
    worker: bool,
    trimmed_bytes: int | None,
    verdicts: Mapping[str, Verdict] | None,
    measured: Measured | None,
    growth: GrowthAccount | None,
    owner_steps: Mapping[str, Sequence[str]],
    recent_window: bool = False,
) -> Cause:
    grows = MIN_GROWTH_PER_HOUR / 3600
    judged = detector_state(verdicts)
    if growth is None:
        # Levels need no rate: glibc's free bytes, and what malloc_trim gave back.
        in_use = _rate(series, "malloc_in_use_bytes")
        retention = _retention(series, trimmed_bytes, in_use, grows, [])
        if retention is not None:
            return retention
        if judged is not None and judged[0] == "warming_up":
            return Cause(
                "warming_up",
                "too early to tell: the detector is still in its warm-up, and too few samples "
                "after the start-up yet to measure a rate",
                [f"detector: {judged[1].state} ({judged[1].reason})"],
            )
        return Cause(
            "unknown",
            "too few samples yet to tell how memory moves (the agent needs a few ticks)",
        )
    rss = growth.rss_bytes_per_second
    uss = _rate(series, "process_unique_memory_bytes")
    malloc = _rate(series, "malloc_in_use_bytes")
    if measured is not None and measured.malloc_in_use is not None:
        malloc = measured.malloc_in_use
    blocks = _rate(series, "python_allocated_blocks")
    allocated = _rate(series, "cuda_allocated_bytes")
    reserved = _rate(series, "cuda_reserved_bytes")
    split = _rate(series, "cuda_inactive_split_bytes")
    retries = _rate(series, "cuda_alloc_retries_total")
    held = sum(rate for _, rate in owner_growth if rate > 0)
    evidence = [f"RSS {_per_hour(rss)}"]
    whole = max(rss, allocated, growth.total_bytes_per_second)

    if reserved > grows and abs(allocated) < EXPLAINS * reserved:
        evidence.append(f"CUDA reserved {_per_hour(reserved)}, allocated {_per_hour(allocated)}")
        if split > grows or retries > 0:
            evidence.append(
                f"inactive split blocks {_per_hour(split)}, "
                f"allocation retries {retries * 3600:.0f}/h"
            )
            return Cause(
                "fragmentation",
                "PyTorch's cache is fragmenting: reserved grows, allocated does not, and freed "
                "blocks are split into pieces too small to reuse (try expandable_segments:True "
                "in PYTORCH_CUDA_ALLOC_CONF)",
                evidence,
            )
        return Cause(
            "cuda_caching_plateau",
            "PyTorch's caching allocator keeps what it reserved; allocated memory is flat, so "
            "this is a cache filling up to its plateau, not a leak",
            evidence,
        )

    # The culprit: the holder that grew most, named only when it grew and its growth is a
    # substantial share of the whole (or fast on its own: RSS over a short traced window is
    # noisy and carries tracing's own memory, yet a holder alone must still be a tenth of it).
    top_path, top_rate = max(owner_growth, key=lambda o: o[1], default=("", 0.0))
    explains = top_rate >= EXPLAINS * whole or whole < grows
    fast = top_rate >= FAST_HOLDER_GROWTH * grows and top_rate >= FAST_HOLDER_SHARE * whole
    culprit = top_rate >= grows and (explains or fast)

    # ... or, where no holder explains it alone, the path beneath one root variable under
    # which several grew that together do: an engine's sessions keeping logits, KV caches and
    # audio in containers of their own, each a fifth of the growth. Naming the biggest of
    # them would send the reader to a fifth of the leak.
    group = None
    if top_rate < EXPLAINS * whole:
        group = _root_group(owner_growth, owner_steps, max(EXPLAINS * whole, grows))

    def named_leak() -> Cause:
        share = f", {top_rate / whole:.0%} of the growth" if whole > 0 else ""
        evidence.append(
            f"{top_path} grew {_per_hour(top_rate)}{share}; holders in all {_per_hour(held)}"
        )
        culprit = _culprit(top_path, 1, top_rate, whole)
        return Cause("leak", f"live objects are piling up in {top_path}", evidence, None, culprit)

    def several_holders(peers: list[tuple[str, float]]) -> Cause:
        together = sum(rate for _, rate in peers)
        for path, rate in peers[:MAX_PEERS_NAMED]:
            evidence.append(f"{path} grew {_per_hour(rate)}, {rate / whole:.0%} of the growth")
        paths = ", ".join(path for path, _ in peers[:MAX_PEERS_NAMED])
        more = f" and {len(peers) - MAX_PEERS_NAMED} more" if len(peers) > MAX_PEERS_NAMED else ""
        return Cause(
            "leak",
            f"live objects are piling up in {len(peers)} holders, none the culprit alone: "
            f"{paths}{more} ({together / whole:.0%} of the growth together)",
            evidence,
        )

    def named_group(path: str, count: int, rate: float) -> Cause:
        evidence.append(
            f"{count} holders under {path} grew {_per_hour(rate)} together, "
            f"{rate / whole:.0%} of the growth; {top_path} the most, {_per_hour(top_rate)}"
        )
        return Cause(
            "leak",
            f"live objects are piling up under {path}, in {count} holders beneath it",
            evidence,
            None,
            _culprit(path, count, rate, whole),
        )

    if judged is not None and judged[0] != "growing":
        state, verdict = judged
        evidence.append(f"detector: {verdict.state} ({verdict.reason})")
        retention = _retention(series, trimmed_bytes, malloc, grows, evidence)
        if retention is not None:
            return retention
        if top_rate >= grows:
            evidence.append(f"in the window {top_path} grew {_per_hour(top_rate)}")
        if state == "warming_up":
            return Cause(
                "warming_up",
                "too early to tell: the detector is still in its warm-up, when caches and "
                "models fill; growth now is not yet a leak",
                evidence,
            )
        if state == "bounded":
            return Cause(
                "bounded_growth",
                "memory rose but is levelling off (the detector calls it bounded), not a leak",
                evidence,
            )
        window_rate = max(rss, top_rate) if measured is not None else top_rate
        if (measured is not None or recent_window) and window_rate >= FAST_HOLDER_GROWTH * grows:
            # The window (this dump's, or the agent's last within the span this dump judges)
            # measured fast growth: "not growing" would deny the evidence above. Over its
            # longer span the detector has not seen it (it began lately, or the dump's own
            # samples were held back from it): too soon to call it a leak, a fill or a
            # one-off load.
            return Cause(
                "unexplained",
                "the traced window measured fast growth that the detector, over its longer "
                "span, does not see yet: too soon to tell a leak from a fill or a one-off "
                "load; dump again in a few minutes",
                evidence,
            )
        return Cause("no_growth", "memory is not growing (the detector says steady)", evidence)

    if group is not None:
        return named_group(*group)
    # Fast, but not the whole alone: where others, under other roots, grew as much (five
    # module caches of a fifth each), naming the first would send the reader to a fifth.
    peers = [(path, rate) for path, rate in owner_growth if rate >= PEER_SHARE * top_rate]
    if owner_growth and culprit and not explains and len(peers) > 1:
        return several_holders(peers)
    if owner_growth and culprit:
        return named_leak()
    touched = _first_touch(measured, rss, malloc, growth, held, grows)
    if touched is not None:
        evidence.append(touched)
        return Cause(
            "unexplained",
            "memory already allocated is being written for the first time: RSS grew while "
            "neither the address space nor malloc's in-use bytes did (a buffer allocated "
            "ahead of its writes: a growing BytesIO or bytearray, an array made empty and "
            "filled, a mapped file being read, a native allocator's pool reserved up front). "
            "A holder's size moves only when such a buffer is reallocated: look at the "
            "biggest holders, or trace a longer window",
            evidence,
        )
    native = growth.native_bytes_per_second
    if measured is not None and native >= grows and native >= EXPLAINS * max(rss, grows):
        evidence.append(
            f"native {_per_hour(native)} of RSS {_per_hour(rss)}; Python allocated "
            f"{_per_hour(growth.python_heap_bytes_per_second or 0.0)}, holders "
            f"{_per_hour(held)}"
        )
        return Cause(
            "native_growth",
            "memory grows outside Python's objects: native code (a C extension or library's "
            "malloc or mmap) holds it, and no Python holder explains it",
            evidence,
        )
    if owner_growth and held < grows and (rss > grows or malloc > grows):
        # A traced window measured every holder and none grew: the window's own growth is
        # tracemalloc's (a trace per live allocation) or lies outside what the census sees.
        evidence.append(f"holders measured in the window grew {_per_hour(held)} in all")
        return Cause(
            "unexplained",
            "memory grew during the traced window but no holder did: the growth may be "
            "tracing's own, or objects outside containers; watch the verdict over a longer span",
            evidence,
        )
    if owner_growth and top_rate >= grows and whole > 0:
        # Holders grew, but none enough to be the culprit: say so, name none.
        evidence.append(
            f"the holder that grew most, {top_path}, grew {_per_hour(top_rate)}: only "
            f"{top_rate / whole:.0%} of the growth"
        )
    if allocated > grows:
        evidence.append(f"CUDA allocated {_per_hour(allocated)}")
        return Cause(
            "leak",
            "live CUDA tensors are growing; take a traced dump (--window) to name their holder",
            evidence,
        )
    retention = _retention(series, trimmed_bytes, malloc, grows, evidence)
    if retention is not None:
        return retention
    if rss < grows and uss < grows:
        return Cause("no_growth", "memory is not growing", evidence)
    python_flat = malloc < EXPLAINS * rss and blocks * 64 < EXPLAINS * rss
    if worker and uss > grows and python_flat:
        evidence.append(f"USS {_per_hour(uss)} while the Python heap is flat")
        return Cause(
            "copy_on_write",
            "a pre-forked worker is copying pages it shared with its master (refcounts and gc "
            "touch them): try gc.freeze() in the master before forking",
            evidence,
        )
    if python_flat:
        evidence.append(f"malloc in use {_per_hour(malloc)}, Python blocks flat")
        return Cause(
            "native_growth",
            "memory grows outside Python's heap and outside malloc's view (a C extension, "
            "mmap, or a native library's cache) that gc cannot see",
            evidence,
        )
    evidence.append(f"malloc in use {_per_hour(malloc)}")
    return Cause(
        "leak",
        "the Python heap is growing; take a traced dump (--window) to name the holder",
        evidence,
    )


def _retention(
    series: Mapping[str, Points],
    trimmed_bytes: int | None,
    malloc: float,
    grows: float,
    evidence: list[str],
) -> Cause | None:
    """Allocator retention, proven by ``malloc_trim`` or read from glibc's free bytes."""
    if trimmed_bytes is not None and trimmed_bytes > 0:
        evidence.append(f"malloc_trim(0) returned {format_bytes(trimmed_bytes)} to the system")
    free_retained = _last(series, "malloc_free_retained_bytes") or 0.0
    resident = _last(series, "process_resident_memory_bytes") or 0.0
    retained_much = resident > 0 and free_retained >= EXPLAINS * resident
    if (trimmed_bytes or 0) >= EXPLAINS * max(resident, 1) or (
        retained_much and malloc < grows and trimmed_bytes is None
    ):
        evidence.append(
            f"glibc holds {format_bytes(free_retained)} free of {format_bytes(resident)} resident"
        )
        return Cause(
            "allocator_retention",
            "the allocator keeps memory the program already freed: RSS is far above malloc in "
            "use, and malloc_trim(0) gives it back (diag dump --trim measures it)",
            evidence,
        )
    return None
